"""The ResNet family: SSD300-ResNet50 as NVIDIA's DeepLearningExamples builds it.

NVIDIA's `PyTorch/Detection/SSD` (ssd/model.py, ssd/utils.py, main.py), layer
for layer, so its checkpoints convert one to one:
  - torchvision's ResNet-50 (v1.5: a bottleneck's stride on its 3x3 conv) up
    to layer3, with layer3's first block at stride 1 (its conv2 and its
    downsample conv): one 38x38x1024 map at 300 px, stride 8;
  - five additional blocks, each a 1x1 conv then a 3x3 conv, both without
    bias and followed by BatchNorm and ReLU: 1024 -> 256 -> 512 (stride 2,
    padding 1), 512 -> 256 -> 512 (same), 512 -> 128 -> 256 (same), then
    256 -> 128 -> 256 twice with a 3x3 of stride 1 and no padding: maps of
    19, 10, 5, 3 and 1;
  - 3x3 heads with bias, 4/6/6/6/4/4 boxes per location, 81 COCO classes;
  - default boxes of their dboxes300_coco: steps 8, 16, 32, 64, 100, 300,
    scales 21, 45, 99, 153, 207, 261, 315 px, aspect ratios 2 (and 3 on the
    middle four maps), then cx, cy, w, h each clamped to [0, 1]: 8732 boxes;
  - inputs: RGB in [0, 1] normalised by ImageNet's mean and std (here
    data.mean_rgb = 255 mean, data.std_rgb = 255 std on 0..255 pixels);
  - BatchNorm as PyTorch's defaults: epsilon 1e-5, momentum 0.1 (Flax's 0.9).

Layout: NVIDIA's heads reshape a [N, k*4, H, W] output as [N, 4, k*H*W]: the
channel is coordinate * k + box, and their default boxes run box, row,
column. ssd_jax's run row, column, box with the channel box * 4 + coordinate
(heads.py); the converter reorders the head's output channels, which is the
whole difference, so the same weights score the same boxes.

Initialisation as theirs: torchvision's ResNet (He normal, fan out) for the
base, Xavier uniform for the additional blocks and the heads (biases 0 here,
PyTorch's default uniform there).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ssd_jax import layers
from ssd_jax.models import heads, ssd, torch_weights

Dtype = Any

IMAGE_SIZE = 300
# (blocks, bottleneck width, stride of the first block) of layer1 ... layer3;
# NVIDIA sets layer3's stride to 1.
LAYERS = ((3, 64, 1), (4, 128, 2), (6, 256, 1))
EXPANSION = 4
STEM_CHANNELS = 64
# The additional blocks: (1x1 channels, output channels, stride, padding).
ADDITIONAL_BLOCKS = ((256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1),
                     (128, 256, 1, 0), (128, 256, 1, 0))
SOURCES = ('layer3',) + tuple(f'additional_{i}' for i in range(len(ADDITIONAL_BLOCKS)))

# ssd/utils.py, dboxes300_coco(); sizes in pixels of the 300 px input.
SCALES = (21, 45, 99, 153, 207, 261, 315)
STEPS = (8, 16, 32, 64, 100, 300)
ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPSILON, BN_MOMENTUM = 1e-5, 0.9   # torch's momentum 0.1

# torchvision's ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
he_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch's xavier_uniform_, NVIDIA's init of the additional blocks and heads.
xavier_uniform = nn.initializers.glorot_uniform()


class Bottleneck(nn.Module):
  """torchvision's Bottleneck: conv1 1x1, conv2 3x3 (the stride), conv3 1x1 to
  width * 4, each with BatchNorm, ReLU after the first two and after the sum
  with the input (through 'downsample', a strided 1x1 conv + BatchNorm, where
  the shape changes). f[B, H, W, C] -> f[B, ceil(H / stride), ..., width * 4]."""
  width: int
  strides: int = 1
  bn_epsilon: float = BN_EPSILON
  bn_momentum: float = BN_MOMENTUM
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(layers.ConvBN, kernel_init=he_fan_out, bn_epsilon=self.bn_epsilon,
                             bn_momentum=self.bn_momentum, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    out = self.width * EXPANSION
    y = conv(self.width, 1, activation='relu', name='conv1')(x, train)
    y = conv(self.width, 3, self.strides, activation='relu', name='conv2')(y, train)
    y = conv(out, 1, name='conv3')(y, train)
    if self.strides != 1 or x.shape[-1] != out:
      x = conv(out, 1, self.strides, name='downsample')(x, train)
    return nn.relu(y + x)


class ResNet50Backbone(nn.Module):
  """ResNet-50 to layer3 (stride 8) plus NVIDIA's additional blocks.

  Submodules: conv1 (7x7 stride 2 + BatchNorm + ReLU, then a 3x3 stride-2 max
  pool), layer1_0 ... layer3_5 (Bottleneck), additional_0 ... additional_4
  (each 'reduce' 1x1 and 'conv' 3x3, ConvBN with ReLU). Returns the maps named
  in `sources` (layer3 and the additional blocks', in network order); layers
  after the last source are not built.

  Attributes:
    width: channel multiplier of every layer (tiny test models; 1.0 is theirs).
    additional: the additional blocks, as ADDITIONAL_BLOCKS.
  """
  sources: Sequence[str] = SOURCES
  width: float = 1.0
  additional: Sequence[Sequence[int]] = ADDITIONAL_BLOCKS
  bn_epsilon: float = BN_EPSILON
  bn_momentum: float = BN_MOMENTUM
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _c(self, n: int) -> int:
    return max(1, int(round(n * self.width)))

  @nn.compact
  def __call__(self, images, train: bool = False) -> list:
    """f[B, S, S, 3] -> the source maps: layer3 f[B, S/8, S/8, 1024], then 512,
    512, 256, 256, 256 channels (sizes rounded up; 38, 19, 10, 5, 3, 1 at 300)."""
    ssd.check_sources(self.sources, self.layer_names())
    kw = dict(bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum, dtype=self.dtype,
              param_dtype=self.param_dtype)
    x = layers.ConvBN(self._c(STEM_CHANNELS), 7, 2, activation='relu', kernel_init=he_fan_out,
                      name='conv1', **kw)(images.astype(self.dtype), train)
    x = layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), nonnegative=True)  # after ReLU
    for i, (blocks, width, stride) in enumerate(LAYERS, 1):
      for j in range(blocks):
        x = Bottleneck(self._c(width), stride if j == 0 else 1, name=f'layer{i}_{j}',
                       **kw)(x, train)
    outputs = {'layer3': x}
    conv = functools.partial(layers.ConvBN, activation='relu', kernel_init=xavier_uniform, **kw)
    for i, (channels, out, stride, pad) in enumerate(self.additional):
      if SOURCES[i] == self.sources[-1]:
        break
      name = f'additional_{i}'
      if min(x.shape[1:3]) + 2 * pad < 3:
        raise ValueError(f'{name} needs a feature map of at least {3 - 2 * pad} but gets '
                         f'{x.shape[1:3]}; drop it from model.sources or use a larger '
                         f'model.image_size.')
      x = conv(self._c(channels), 1, name=f'{name}_reduce')(x, train)
      x = conv(self._c(out), 3, stride, padding=pad, name=f'{name}_conv')(x, train)
      outputs[name] = x
    return [outputs[s] for s in self.sources]

  def layer_names(self) -> tuple[str, ...]:
    return SOURCES[:len(self.additional) + 1]


def _build(model_cfg, settings, dtype, param_dtype) -> ResNet50Backbone:
  return ResNet50Backbone(sources=tuple(model_cfg.sources), width=model_cfg.width,
                          additional=tuple(tuple(b) for b in settings.additional),
                          bn_epsilon=model_cfg.batch_norm_epsilon,
                          bn_momentum=model_cfg.batch_norm_momentum, dtype=dtype,
                          param_dtype=param_dtype)


PART = ssd.BackbonePart(
    settings=dict(
        # (1x1 channels, output channels, stride, padding) of each additional block
        additional=ADDITIONAL_BLOCKS,
    ),
    layers=lambda settings: SOURCES[:len(settings.additional) + 1],
    build=_build)

# NVIDIA's heads: MultiBox 3x3 convs, Xavier uniform weights, PyTorch's default biases
# (their _init_weights sets only the parameters of more than one dimension).
HEADS = {'ssd_xavier': heads.multibox(xavier_uniform, heads.torch_conv_bias)}

ARCHITECTURES = {
    'ssd300_resnet50': dict(
        model=dict(image_size=IMAGE_SIZE, backbone='resnet50', head='ssd_xavier',
                   sources=SOURCES, batch_norm_momentum=BN_MOMENTUM,
                   batch_norm_epsilon=BN_EPSILON),
        anchors=dict(min_sizes=SCALES[:-1], max_sizes=SCALES[1:], steps=STEPS,
                     aspect_ratios=ASPECT_RATIOS, clip='cxcywh'),
        data=dict(mean_rgb=tuple(255 * m for m in IMAGENET_MEAN),
                  std_rgb=tuple(255 * s for s in IMAGENET_STD)),
    ),
}


# --- PyTorch checkpoints -> Flax variables (NumPy only) -------------------------------

# NVIDIA's SSD300 keeps ResNet's children 0..6 as feature_extractor.feature_extractor.<i>.
NVIDIA_BASE = {'0': 'conv1', '1': 'bn1', '4': 'layer1', '5': 'layer2', '6': 'layer3'}


def _base(sd: torch_weights.StateDict) -> dict:
  """torchvision ResNet-50 keys (conv1, bn1, layer1..layer3) -> the backbone's
  stem and bottlenecks (layer4 and fc, if present, are not SSD's)."""
  named = {'conv1': torch_weights.conv_bn(sd, 'conv1', 'bn1')}
  for i, (blocks, _, _) in enumerate(LAYERS, 1):
    found = sd.indices(f'layer{i}')
    if found != list(range(blocks)):
      raise ValueError(f'{sd.source}: layer{i} has blocks {found}, not ResNet-50\'s '
                       f'0..{blocks - 1}; is it a ResNet-50?')
    for j in range(blocks):
      prefix = f'layer{i}.{j}'
      block = {f'conv{k}': torch_weights.conv_bn(sd, f'{prefix}.conv{k}', f'{prefix}.bn{k}')
               for k in (1, 2, 3)}
      if f'{prefix}.downsample.0.weight' in sd:
        block['downsample'] = torch_weights.conv_bn(sd, f'{prefix}.downsample.0',
                                                    f'{prefix}.downsample.1')
      named[f'layer{i}_{j}'] = torch_weights.merge(block)
  return named


def _box_major(weight: np.ndarray, bias: np.ndarray, per_box: int) -> dict:
  """A head conv whose output channel is value * k + box (NVIDIA's view(N, per_box,
  -1)) -> Flax conv params whose channel is box * per_box + value (ssd_jax's)."""
  k = weight.shape[0] // per_box
  order = np.arange(per_box * k).reshape(per_box, k).T.reshape(-1)
  return torch_weights.conv_params(weight[order], bias[order])


def nvidia_ssd300_variables(sd: torch_weights.StateDict) -> dict:
  """NVIDIA's SSD300 state dict (their checkpoint's 'model') -> {'params':
  {'backbone', 'head'}, 'batch_stats': {'backbone'}}; their 81 classes are
  ssd_jax's COCO classes (0 background, 1..80 COCO's in category-id order)."""
  prefix = 'feature_extractor.feature_extractor.'
  renamed = {}
  for key, value in sd.tensors.items():
    if key.startswith(prefix):
      index, _, rest = key[len(prefix):].partition('.')
      if index in NVIDIA_BASE:
        renamed[f'{NVIDIA_BASE[index]}.{rest}'] = value
  named = _base(sd.renamed(renamed))
  for i in range(len(ADDITIONAL_BLOCKS)):
    p = f'additional_blocks.{i}'
    named[f'additional_{i}_reduce'] = torch_weights.conv_bn(sd, f'{p}.0', f'{p}.1')
    named[f'additional_{i}_conv'] = torch_weights.conv_bn(sd, f'{p}.3', f'{p}.4')
  head = {}
  for i, source in enumerate(SOURCES):
    classes = sd[f'conf.{i}.weight'].shape[0] // (sd[f'loc.{i}.weight'].shape[0] // 4)
    head[f'{source}_loc'] = _box_major(sd[f'loc.{i}.weight'], sd[f'loc.{i}.bias'], 4)
    head[f'{source}_conf'] = _box_major(sd[f'conf.{i}.weight'], sd[f'conf.{i}.bias'], classes)
  backbone = torch_weights.merge(named)
  return torch_weights.variables({'backbone': backbone['params'], 'head': head},
                                 {'backbone': backbone['batch_stats']})


def resnet50_variables(sd: torch_weights.StateDict) -> dict:
  """torchvision's ImageNet ResNet-50 -> the backbone's stem and layer1..layer3
  ({'params': {'backbone'}, 'batch_stats': {'backbone'}}); the additional
  blocks and heads keep their initialisation, layer4 and fc are dropped."""
  backbone = torch_weights.merge(_base(sd))
  return torch_weights.variables({'backbone': backbone['params']},
                                 {'backbone': backbone['batch_stats']})


# NVIDIA's recipe (main.py, README) on COCO 2017: SGD momentum 0.9, lr 2.6e-3
# per 32 images (scaled linearly with the global batch), weight decay 5e-4 on
# weights only (their "tencent trick": none on biases and BatchNorm), 65
# epochs, the rate x0.1 after epochs 43 and 54, a 300-iteration linear warmup
# from 0 (step i at i / 300 of the rate);
# an epoch is the 117,266 train images with objects.
NVIDIA_EPOCHS, NVIDIA_MILESTONES, NVIDIA_BATCH = 65, (43, 54), 32
COCO_TRAIN_IMAGES = 117_266


def nvidia_ssd300():
  """SSD300-ResNet50 on COCO as NVIDIA trains and evaluates it (see the module doc).

  Evaluation as their evaluate.py: softmax, score > 0.05, the best 200 per
  class, NMS at 0.5 on boxes not clipped to the image, 200 per image.
  Training: NVIDIA_* above, their matching (each object's best default box,
  then IoU > 0.5) and loss (3:1 hard negatives, each image divided by its own
  matches) and augmentation (DALI's crop and colour jitter: augment.crop_style,
  augment.photometric_style);
  where ssd_jax still differs from theirs: docs/models.md.
  """
  from ssd_jax import recipes
  c = recipes.preset('ssd300_resnet50', 'coco')
  c.eval.update(dict(score_threshold=0.05, top_k=200, nms_iou=0.5, max_detections=200,
                     clip_boxes=False))
  steps_per_epoch = COCO_TRAIN_IMAGES / NVIDIA_BATCH
  c.optim.update(dict(name='sgd_torch', learning_rate=2.6e-3, lr_batch_size=NVIDIA_BATCH,
                      momentum=0.9, weight_decay=5e-4, weight_decay_roles=('weight',),
                      bias_lr_mult=1.0, warmup_steps=300, warmup_start_factor=0.0,
                      boundaries=tuple(round(e * steps_per_epoch) for e in NVIDIA_MILESTONES)))
  c.matching.rule, c.loss.normalize = 'forced_best', 'image'
  c.train.update(dict(batch_size=NVIDIA_BATCH,
                      num_steps=round(NVIDIA_EPOCHS * steps_per_epoch)))
  # Their DALI pipeline: RandomBBoxCrop (thresholds 0, 0.1, 0.3 ... 0.9 or no
  # crop, one attempt a draw, width and height 0.3-1, their ratio 0.5-2), a
  # flip, a resize to 300 x 300 (triangular filter when it shrinks, linear when
  # it enlarges), then on every image DALI's colour twist: hue +-0.5
  # degrees, saturation 0.5-1.5, contrast 0.5-1.5 around 128 and brightness
  # x0.875-1.125; no zoom out.
  c.augment.update(dict(zoom_out=False, crop_style='dali',
                        crop_min_ious=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9), crop_min_scale=0.3,
                        crop_aspect_range=(0.5, 2.0), crop_trials=50,
                        resize_methods=('triangular',),
                        photometric_style='dali', brightness_range=(0.875, 1.125),
                        contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                        hue_delta=0.25))
  return c


def _imagenet_base():
  from ssd_jax import recipes
  return recipes.preset('ssd300_resnet50', 'coco')


CONVERTERS = {
    'nvidia_ssd300': ssd.Converter(
        lambda sd, options: (nvidia_ssd300_variables(sd), {}), config=nvidia_ssd300,
        about="NVIDIA's SSD300-ResNet50 checkpoint (DeepLearningExamples; the state dict "
        "under 'model'), with their recipe (configs/coco300_resnet50.py)"),
    'resnet50': ssd.Converter(
        lambda sd, options: (resnet50_variables(sd), {}), base=_imagenet_base,
        about="torchvision's ImageNet ResNet-50, the base NVIDIA's recipe trains from: its "
        'stem and layer1..layer3'),
}

PUBLISHED = {
    # torch.hub's nvidia_ssd (ssd/entrypoints.py); NVIDIA's code publishes no checksum.
    'ssd300_resnet50_nvidia_coco': ssd.Weights(
        'nvidia_ssdpyt_amp_200703.pt', None, 'nvidia_ssd300',
        'https://api.ngc.nvidia.com/v2/models/nvidia/ssd_pyt_ckpt_amp/versions/20.06.0/files/',
        about="NVIDIA's SSD300-ResNet50 trained with AMP on COCO 2017 (no published checksum)"),
    # IMAGENET1K_V2: main.py's --torchvision-weights-version default.
    'resnet50_imagenet': ssd.Weights(
        'resnet50-11ad3fa6.pth', '11ad3fa6', 'resnet50',
        about="torchvision's ImageNet ResNet-50 (IMAGENET1K_V2), the base NVIDIA's recipe "
        'trains from'),
}

FAMILY = ssd.Family(
    backbone='resnet50', part=PART, architectures=ARCHITECTURES, heads=HEADS,
    # XLA:CPU: YNNPACK for matrix products and reductions (BatchNorm's in
    # training), as for MobileNetV3. On the 2-core Zen 4 (2026-12-05, timed
    # alternately), the train step at batch 8 ran at 0.81-0.87 img/s against
    # 0.71-0.76 with matrix products alone and 0.35-0.59 with XLA's defaults; the
    # detector at batch 1 and 8 within the machine's spread either way.
    compiler_options={'xla_cpu_experimental_ynn_fusion_type':
                      'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'},
    converters=CONVERTERS, published=PUBLISHED, imagenet='resnet50_imagenet')
