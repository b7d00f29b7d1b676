"""The paper's family: VGG16 (reduced, atrous) with SSD300's or SSD512's extra layers.

`VGG16Backbone` is registered as model.backbone 'vgg16' and uses the MultiBox
head ('ssd', heads.py). Images are NHWC RGB pixels minus data.mean_rgb.
Layer names follow the paper (conv4_3, conv7, conv8_2, ...) so that converted
checkpoints map one to one. Converters: torchvision's ImageNet VGG16
('vgg16'), the `vgg16_reducedfc.pth` base ('reduced_vgg') and torchvision's
COCO SSD300 ('torchvision_ssd300'); see ssd_jax/convert.py.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ssd_jax import labels, layers, pixels
from ssd_jax.models import heads, ssd, torch_weights

Dtype = Any

# VGG16 convolutions per block (conv1_1 ... conv5_3), all 3x3 pad 1.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

# Extra feature layers after conv7: (name, features, kernel, stride, padding).
EXTRA_LAYERS = {
    'ssd300': (
        ('conv8_1', 256, 1, 1, 0), ('conv8_2', 512, 3, 2, 1),
        ('conv9_1', 128, 1, 1, 0), ('conv9_2', 256, 3, 2, 1),
        ('conv10_1', 128, 1, 1, 0), ('conv10_2', 256, 3, 1, 0),
        ('conv11_1', 128, 1, 1, 0), ('conv11_2', 256, 3, 1, 0),
    ),
    'ssd512': (
        ('conv8_1', 256, 1, 1, 0), ('conv8_2', 512, 3, 2, 1),
        ('conv9_1', 128, 1, 1, 0), ('conv9_2', 256, 3, 2, 1),
        ('conv10_1', 128, 1, 1, 0), ('conv10_2', 256, 3, 2, 1),
        ('conv11_1', 128, 1, 1, 0), ('conv11_2', 256, 3, 2, 1),
        ('conv12_1', 128, 1, 1, 0), ('conv12_2', 256, 4, 1, 1),
    ),
}
SSD300_SOURCES = ('conv4_3', 'conv7', 'conv8_2', 'conv9_2', 'conv10_2', 'conv11_2')
SSD512_SOURCES = SSD300_SOURCES + ('conv12_2',)


def layer_order(extras: str) -> tuple[str, ...]:
  """Names of every layer that can be a prediction source, in network order."""
  vgg = tuple(f'conv{b}_{i}' for b, convs in enumerate(VGG16_BLOCKS, 1)
              for i in range(1, len(convs) + 1))
  if extras not in EXTRA_LAYERS:
    raise ValueError(f'backbone.extras={extras!r} is not one of {sorted(EXTRA_LAYERS)}.')
  return vgg + ('conv6', 'conv7') + tuple(spec[0] for spec in EXTRA_LAYERS[extras])


def _pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((p, p), (p, p))


def ceil_max_pool(x):
  """2x2 stride-2 max pool rounding up (75 -> 38), as Caffe's pooling does."""
  h, w = x.shape[1:3]
  return layers.max_pool(x, (2, 2), (2, 2), ((0, h % 2), (0, w % 2)))


class L2Norm(nn.Module):
  """Normalise across channels, then scale each channel by a learned factor.

  The norm is taken in float32 whatever the compute dtype. The scale multiplies
  features, so it is a weight (decayed in the recipe), not a normalisation offset.
  """
  PARAM_ROLES = {'scale': 'weight'}
  scale_init: float = 20.0
  eps: float = 1e-10
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.constant(self.scale_init),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True)) + self.eps
    return (x32 / norm * scale.astype(jnp.float32)).astype(self.dtype)


class VGG16Backbone(nn.Module):
  """VGG16 (reduced, atrous) plus the extra layers; returns the source maps.

  Attributes:
    sources: names of the layers whose outputs are prediction sources, in
      network order. Layers after the last source are not built.
    extras: 'ssd300' or 'ssd512', the layout of the extra layers.
    width: channel multiplier for every layer (1.0 is the paper's network).
    atrous: pool5 3x3/1 and conv6 dilated by 6 (the paper); False keeps pool5
      2x2/2 and an undilated conv6 (the "no atrous" ablation).
    fc_features: channels of conv6 and conv7.
    batch_norm: every convolution (VGG, conv6, conv7 and the extras) without a
      bias, followed by BatchNorm '<name>_bn' before its ReLU, as torchvision's
      vgg16_bn does for the base: a network trained from scratch then converges
      in far fewer steps. False is the paper's network.
    bn_momentum, bn_epsilon: those BatchNorm layers' settings (Flax's momentum).
  """
  sources: Sequence[str] = SSD300_SOURCES
  extras: str = 'ssd300'
  width: float = 1.0
  atrous: bool = True
  fc_features: int = 1024
  l2norm_scale: float = 20.0
  batch_norm: bool = False
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _features(self, n: int) -> int:
    return max(1, int(round(n * self.width)))

  @nn.compact
  def __call__(self, images, train: bool = False) -> list:
    """f[B, H, W, 3] -> list of f[B, h_i, w_i, c_i], one per source (`train`:
    BatchNorm's batch statistics, where batch_norm is set)."""
    ssd.check_sources(self.sources, layer_order(self.extras))
    plain = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=heads.caffe_xavier, use_bias=not self.batch_norm,
                              conv_general_dilated=layers.conv_general_dilated)

    def conv(features, kernel, name, **kw):
      """The conv `name`, then its BatchNorm where batch_norm is set."""
      layer = plain(features, kernel, name=name, **kw)
      if not self.batch_norm:
        return layer
      norm = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                          epsilon=self.bn_epsilon, dtype=self.dtype,
                          param_dtype=self.param_dtype, name=f'{name}_bn')
      return lambda x: norm(layer(x))

    outputs = {}

    def emit(name, x):
      if name == 'conv4_3' and name in self.sources:
        x = L2Norm(self.l2norm_scale, dtype=self.dtype, param_dtype=self.param_dtype,
                   name='conv4_3_norm')(x)
      outputs[name] = x
      return name == self.sources[-1]  # sources are in network order: all done

    x = images.astype(self.dtype)
    for b, convs in enumerate(VGG16_BLOCKS, 1):
      for i, f in enumerate(convs, 1):
        name = f'conv{b}_{i}'
        x = nn.relu(conv(self._features(f), (3, 3), padding=_pad(1), name=name)(x))
        if name in self.sources and emit(name, x):
          return [outputs[s] for s in self.sources]
      if b < 5:
        x = ceil_max_pool(x)
    if self.atrous:
      x = layers.max_pool(x, (3, 3), (1, 1), _pad(1))
      x = conv(self._features(self.fc_features), (3, 3), padding=_pad(6),
               kernel_dilation=(6, 6), name='conv6')(x)
    else:
      x = ceil_max_pool(x)
      x = conv(self._features(self.fc_features), (3, 3), padding=_pad(1), name='conv6')(x)
    x = nn.relu(x)
    if 'conv6' in self.sources and emit('conv6', x):
      return [outputs[s] for s in self.sources]
    x = nn.relu(conv(self._features(self.fc_features), (1, 1), name='conv7')(x))
    if 'conv7' in self.sources and emit('conv7', x):
      return [outputs[s] for s in self.sources]
    for name, f, k, s, p in EXTRA_LAYERS[self.extras]:
      if min(x.shape[1:3]) + 2 * p < k:
        raise ValueError(f'{name} needs a feature map of at least {k - 2 * p} but gets '
                         f'{x.shape[1:3]}; drop it from model.sources or use a larger '
                         f'model.image_size.')
      x = nn.relu(conv(self._features(f), (k, k), strides=(s, s), padding=_pad(p),
                       name=name)(x))
      if name in self.sources and emit(name, x):
        break
    return [outputs[s] for s in self.sources]


def _build(model_cfg, settings, dtype, param_dtype) -> VGG16Backbone:
  return VGG16Backbone(sources=tuple(model_cfg.sources), extras=settings.extras,
                       width=model_cfg.width, atrous=settings.atrous,
                       fc_features=settings.fc_features, l2norm_scale=settings.l2norm_scale,
                       batch_norm=settings.batch_norm,
                       bn_momentum=model_cfg.batch_norm_momentum,
                       bn_epsilon=model_cfg.batch_norm_epsilon, dtype=dtype,
                       param_dtype=param_dtype)


PART = ssd.BackbonePart(
    settings=dict(
        extras='ssd300',        # layout of the extra layers: EXTRA_LAYERS
        atrous=True,            # pool5 3x3/1 + dilated conv6
        fc_features=1024,       # conv6 / conv7 channels
        l2norm_scale=20.0,      # initial conv4_3 L2Norm scale
        batch_norm=False,       # BatchNorm after every conv (from-scratch training)
    ),
    layers=lambda settings: layer_order(settings.extras),
    build=_build)

# What the input size fixes, whatever the dataset (the authors' recipe).
ARCHITECTURES = {
    'ssd300': dict(
        model=dict(image_size=300, sources=SSD300_SOURCES),
        backbone=dict(extras='ssd300'),
        anchors=dict(steps=(8, 16, 32, 64, 100, 300),
                     aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))),
    ),
    'ssd512': dict(
        model=dict(image_size=512, sources=SSD512_SOURCES),
        backbone=dict(extras='ssd512'),
        anchors=dict(steps=(8, 16, 32, 64, 128, 256, 512),
                     aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))),
    ),
}


# --- PyTorch checkpoints -> Flax variables (NumPy only) -------------------------------

# conv1_1 ... conv5_3 and their indices in torchvision's vgg16.features (the
# same indices as the reduced-VGG ModuleList; conv6, conv7 follow there at 31, 33).
VGG_CONVS = layer_order('ssd300')[:13]
VGG_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
REDUCED_FC_INDICES = {'conv6': 31, 'conv7': 33}

# torchvision's ImageNet normalisation of [0, 1] RGB inputs for its VGG16.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Where the layers of torchvision's ssd300_vgg16 live in its state dict.
TV_LAYERS = {
    **{name: f'backbone.features.{i}' for name, i in zip(VGG_CONVS[:10], VGG_INDICES)},
    'conv5_1': 'backbone.extra.0.1', 'conv5_2': 'backbone.extra.0.3',
    'conv5_3': 'backbone.extra.0.5', 'conv6': 'backbone.extra.0.7.1',
    'conv7': 'backbone.extra.0.7.3',
    **{f'conv{8 + i}_{j + 1}': f'backbone.extra.{i + 1}.{2 * j}'
       for i in range(4) for j in range(2)},
}


def fold_input_normalisation(conv1: dict, mean: Sequence[float], std: Sequence[float],
                             mean_rgb: Sequence[float]) -> dict:
  """conv1_1 trained on (pixel / 255 - mean) / std -> the same layer on pixel - mean_rgb.

  (p/255 - m)/s = (x + mean_rgb - 255 m) / (255 s) with x = p - mean_rgb: the
  kernel divides by 255 s per input channel and the bias absorbs the rest.
  Exact where the 3x3 window lies inside the image; at the border the zero
  padding differs by (mean_rgb - 255 m), under one grey level for the
  ImageNet mean and pixels.MEAN_RGB.
  """
  scale = 1.0 / (255.0 * np.asarray(std, np.float64))
  kernel = conv1['kernel'] * scale[None, None, :, None]
  shift = np.asarray(mean_rgb, np.float64) - 255.0 * np.asarray(mean, np.float64)
  bias = conv1['bias'] + np.einsum('hwio,i->o', kernel, shift)
  return {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32)}


def vgg16_base(sd: torch_weights.StateDict,
               mean_rgb: Sequence[float] = pixels.MEAN_RGB) -> dict:
  """torchvision ImageNet VGG16 -> backbone params conv1_1..conv7.

  conv1_1 is rescaled (and its bias shifted) to take RGB pixels minus mean_rgb
  (fold_input_normalisation). fc6 f[4096, 512*7*7] keeps every 4th output and
  every 3rd tap of its 7x7 window (1024x512x3x3, used with dilation 6), as the
  paper's authors subsampled it; fc7 f[4096, 4096] keeps every 4th input and
  output (1024x1024x1x1).
  """
  params = {name: sd.conv(f'features.{i}') for name, i in zip(VGG_CONVS, VGG_INDICES)}
  params['conv1_1'] = fold_input_normalisation(params['conv1_1'], IMAGENET_MEAN, IMAGENET_STD,
                                               mean_rgb)
  fc6, fc7 = sd['classifier.0.weight'], sd['classifier.3.weight']
  if fc6.shape != (4096, 512 * 7 * 7) or fc7.shape != (4096, 4096):
    raise ValueError(f'{sd.source}: classifier.0 / classifier.3 weights are {fc6.shape} / '
                     f'{fc7.shape}, not VGG16\'s fc6 (4096, 25088) and fc7 (4096, 4096).')
  params['conv6'] = torch_weights.conv_params(fc6.reshape(4096, 512, 7, 7)[::4, :, ::3, ::3],
                                              sd['classifier.0.bias'][::4])
  params['conv7'] = torch_weights.conv_params(fc7[::4, ::4, None, None],
                                              sd['classifier.3.bias'][::4])
  return params


def reduced_vgg_base(sd: torch_weights.StateDict, channel_order: str = 'bgr') -> dict:
  """vgg16_reducedfc.pth layout (keys '0.weight' ... '33.bias', optionally under
  'vgg.'; conv6 and conv7 already reduced) -> backbone params conv1_1..conv7.
  It comes from Caffe, which reads BGR: conv1_1's input channels are reversed
  to take RGB (channel_order='rgb' keeps them as they are)."""
  if channel_order not in ('bgr', 'rgb'):
    raise ValueError(f'--channel_order={channel_order!r}: use "bgr" (Caffe-derived weights) '
                     f'or "rgb".')
  if '0.weight' not in sd and 'vgg.0.weight' in sd:
    sd = sd.renamed({k.removeprefix('vgg.'): v for k, v in sd.tensors.items()})
  indices = dict(zip(VGG_CONVS, VGG_INDICES), **REDUCED_FC_INDICES)
  params = {name: sd.conv(str(i)) for name, i in indices.items()}
  if channel_order == 'bgr':
    params['conv1_1']['kernel'] = np.ascontiguousarray(params['conv1_1']['kernel'][:, :, ::-1])
  return params


def torchvision_ssd300(sd: torch_weights.StateDict) -> dict:
  """torchvision ssd300_vgg16 -> full detector params for recipes.torchvision_ssd300(),
  classes in ssd_jax's order (labels.TORCHVISION_CLASS_ORDER)."""
  backbone = {name: sd.conv(prefix) for name, prefix in TV_LAYERS.items()}
  backbone['conv4_3_norm'] = {'scale': sd['backbone.scale_weight'].astype(np.float32)}
  head = {}
  for i, source in enumerate(SSD300_SOURCES):
    head[f'{source}_loc'] = sd.conv(f'head.regression_head.module_list.{i}')
    head[f'{source}_conf'] = torch_weights.permute_classes(
        sd.conv(f'head.classification_head.module_list.{i}'), labels.TORCHVISION_CLASS_ORDER)
  return {'backbone': backbone, 'head': head}


def _load_vgg16(sd, options):
  mean_rgb = list(options.get('mean_rgb') or pixels.MEAN_RGB)
  return {'params': {'backbone': vgg16_base(sd, mean_rgb)}}, {'mean_rgb': mean_rgb}


def _load_reduced_vgg(sd, options):
  order = options.get('channel_order', 'bgr')
  return {'params': {'backbone': reduced_vgg_base(sd, order)}}, {'channel_order': order}


def _ssd300_base():
  from ssd_jax import recipes
  return recipes.preset('ssd300', 'voc')


def _torchvision_ssd300_config():
  from ssd_jax import recipes
  return recipes.torchvision_ssd300()


CONVERTERS = {
    'vgg16': ssd.Converter(
        _load_vgg16, base=_ssd300_base,
        about="torchvision's ImageNet VGG16: conv1_1..conv5_3 copied, fc6 and fc7 "
        'subsampled into conv6 and conv7, conv1_1 folded to take pixels minus data.mean_rgb'),
    'reduced_vgg': ssd.Converter(
        _load_reduced_vgg, base=_ssd300_base,
        about='vgg16_reducedfc.pth (Caffe-derived, BGR, which --channel_order=rgb '
        'keeps): conv6 and conv7 already reduced'),
    'torchvision_ssd300': ssd.Converter(
        lambda sd, options: ({'params': torchvision_ssd300(sd)}, {}),
        config=_torchvision_ssd300_config,
        about="torchvision's ssd300_vgg16 COCO detector, with recipes.torchvision_ssd300() "
        'reproducing its boxes, preprocessing and post-processing (classes 1..80 are '
        "COCO's 80 in label order, the ten unused ids follow)"),
}

# From torchvision's model builders (torchvision/models/...: *_Weights.url).
PUBLISHED = {
    'ssd300_vgg16_coco': ssd.Weights(
        'ssd300_vgg16_coco-b556d3b4.pth', 'b556d3b4', 'torchvision_ssd300',
        about="torchvision's SSD300 (VGG16) on COCO 2017, box AP 25.1"),
    'vgg16_imagenet': ssd.Weights(
        'vgg16-397923af.pth', '397923af', 'vgg16',
        about="torchvision's ImageNet VGG16, reduced to SSD's base (conv6, conv7)"),
}

FAMILY = ssd.Family(
    backbone='vgg16', part=PART, architectures=ARCHITECTURES,
    # XLA:CPU: YNNPACK for matrix products only; XLA's own convolutions
    # (xla_cpu.py has the measurements).
    compiler_options={'xla_cpu_experimental_ynn_fusion_type':
                      'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'},
    converters=CONVERTERS, published=PUBLISHED, imagenet='vgg16_imagenet')
