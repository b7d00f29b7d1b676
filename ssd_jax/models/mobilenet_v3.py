"""The MobileNetV3 family: SSDLite320-MobileNetV3-Large as torchvision builds it.

torchvision's `ssdlite320_mobilenet_v3_large` (detection/ssdlite.py on top of
mobilenetv3.py and ops/misc.py), layer for layer, so its state dicts convert one
to one (see `torchvision_ssdlite320_variables`). Registered as model.backbone
'mobilenet_v3_large', with the SSDLite head ('ssdlite', heads.py).

Conventions:
  - Images are NHWC RGB already scaled to [-1, 1] ((x / 255 - 0.5) / 0.5, what
    torchvision's image_mean = image_std = 0.5 do).
  - Every convolution pads (k - 1) // 2 on all four sides, as PyTorch does (not
    'SAME', which pads stride-2 layers on one side only).
  - A conv followed by BatchNorm has no bias (torchvision's Conv2dNormActivation
    adds one only without a norm); the head's last 1x1 convs and the
    squeeze-excitation convs have biases.
  - BatchNorm: epsilon 1e-3, Flax momentum 0.97 (torch's momentum=0.03 is the
    weight of the new batch). Variables are {'params', 'batch_stats'}.
  - Initialisers: torchvision re-initialises every conv of the backbone, extras
    and head from normal(0, 0.03) with zero biases when no ImageNet backbone is
    given; BatchNorm scale 1, bias 0. `heads.SSDLITE_INIT` does the same here.

Source maps at 320x320 (reduced tail): the C4 block's expansion 1x1 conv
(672 channels, 20x20, stride 16), the features' last 1x1 conv (480, 10x10),
then four extra blocks (512 5x5, 256 3x3, 256 2x2, 128 1x1). With 6 boxes per
location (aspect ratios 2 and 3) that is 6 * (400 + 100 + 25 + 9 + 4 + 1) = 3234
boxes.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssd_jax import labels, layers
from ssd_jax.models import heads, ssd, torch_weights

Dtype = Any

IMAGE_SIZE = 320
# (kernel, expanded, out, squeeze-excitation, activation, stride) of the inverted
# residual blocks features_1 ... features_15, before the width multiplier
# (torchvision's _mobilenet_v3_conf, the paper's Table 1). Each block's input is
# the previous block's output; the stem (features_0) gives 16 channels.
MOBILENET_V3_LARGE_BLOCKS = (
    (3, 16, 16, False, 'relu', 1),
    (3, 64, 24, False, 'relu', 2),  # C1
    (3, 72, 24, False, 'relu', 1),
    (5, 72, 40, True, 'relu', 2),  # C2
    (5, 120, 40, True, 'relu', 1),
    (5, 120, 40, True, 'relu', 1),
    (3, 240, 80, False, 'hardswish', 2),  # C3
    (3, 200, 80, False, 'hardswish', 1),
    (3, 184, 80, False, 'hardswish', 1),
    (3, 184, 80, False, 'hardswish', 1),
    (3, 480, 112, True, 'hardswish', 1),
    (3, 672, 112, True, 'hardswish', 1),
    (5, 672, 160, True, 'hardswish', 2),  # C4
    (5, 960, 160, True, 'hardswish', 1),
    (5, 960, 160, True, 'hardswish', 1),
)
STEM_CHANNELS = 16
# features_13, the last strided block: the first source map is its expansion.
C4_BLOCK = 13
# The reduced tail (Table 6 of the MobileNetV3 paper) halves the C4 block's output
# and the expansion and output of the two blocks after it; the last 1x1 conv
# (6x the last block's output) follows: 480 channels instead of 960.
REDUCED_BLOCKS = (13, 14, 15)
LAST_CONV_EXPANSION = 6
SSDLITE_EXTRA_CHANNELS = (512, 256, 256, 128)
# torchvision's DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95):
# scales 0.2 + 0.15 k (k = 0..5) and 1.0 for the last s'_k, centres (j + 0.5) / f_k
# (no steps), box sizes clipped to [0, 1].
SSDLITE_MIN_RATIO, SSDLITE_MAX_RATIO = 0.2, 0.95
SSDLITE_ASPECT_RATIOS = ((2, 3),) * 6
SSDLITE_NUM_CLASSES = 91  # torchvision's COCO category ids, 0 background
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.97  # torch momentum 0.03

# torchvision's _normal_init for every conv of SSDLite (heads.SSDLITE_INIT).
ConvBN = functools.partial(layers.ConvBN, kernel_init=heads.SSDLITE_INIT, bn_epsilon=BN_EPSILON,
                           bn_momentum=BN_MOMENTUM)


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's _make_divisible: v rounded to a multiple of divisor (at least
  divisor), rounded up once more if that lost over 10% of v."""
  rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * v else rounded


class BlockConfig(NamedTuple):
  """One inverted residual block, channels after the width multiplier."""
  inputs: int
  kernel: int
  expanded: int
  out: int
  squeeze: int  # squeeze-excitation channels, 0 without one
  activation: str
  stride: int

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.inputs == self.out

  @property
  def has_expand(self) -> bool:
    return self.expanded != self.inputs


def block_configs(width_mult: float = 1.0, reduced_tail: bool = True) -> tuple[BlockConfig, ...]:
  """The 15 blocks features_1 ... features_15 as torchvision configures them:
  the reduced tail halves first, then the width multiplier scales (to a multiple
  of 8); squeeze channels are make_divisible(expanded // 4)."""
  def adjust(c):
    return make_divisible(c * width_mult, 8)

  configs, inputs = [], adjust(STEM_CHANNELS)
  for i, (k, expanded, out, se, act, stride) in enumerate(MOBILENET_V3_LARGE_BLOCKS, 1):
    if reduced_tail and i in REDUCED_BLOCKS:
      out //= 2
      expanded = expanded if i == C4_BLOCK else expanded // 2
    expanded, out = adjust(expanded), adjust(out)
    squeeze = make_divisible(expanded // 4, 8) if se else 0
    configs.append(BlockConfig(inputs, k, expanded, out, squeeze, act, stride))
    inputs = out
  return tuple(configs)


class SqueezeExcitation(nn.Module):
  """x * hardsigmoid(fc2(relu(fc1(mean over H, W of x)))); fc1, fc2 1x1 convs
  with biases (torchvision's SqueezeExcitation with scale_activation=Hardsigmoid)."""
  squeeze: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, kernel_size=(1, 1), kernel_init=heads.SSDLITE_INIT,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = nn.relu(conv(self.squeeze, name='fc1')(scale))
    scale = nn.hard_sigmoid(conv(x.shape[-1], name='fc2')(scale))  # relu6(x + 3) / 6
    return x * scale


class InvertedResidual(nn.Module):
  """MobileNetV3's block: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1
  (no activation), plus the input when the stride is 1 and channels agree."""
  config: BlockConfig
  bn_epsilon: float = BN_EPSILON
  bn_momentum: float = BN_MOMENTUM
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, return_expanded: bool = False):
    """f[B, H, W, inputs] -> f[B, H / stride, W / stride, out]; with
    return_expanded, (the expansion's output f[B, H, W, expanded], that)."""
    c = self.config
    conv_bn = functools.partial(ConvBN, bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum,
                                dtype=self.dtype, param_dtype=self.param_dtype)
    y = x
    if c.has_expand:
      y = conv_bn(c.expanded, 1, activation=c.activation, name='expand')(y, train)
    expanded = y
    y = conv_bn(c.expanded, c.kernel, c.stride, depthwise=True, activation=c.activation,
                name='depthwise')(y, train)
    if c.squeeze:
      y = SqueezeExcitation(c.squeeze, self.dtype, self.param_dtype, name='se')(y)
    y = conv_bn(c.out, 1, name='project')(y, train)
    if c.residual:
      y = y + x
    return (expanded, y) if return_expanded else y


class ExtraBlock(nn.Module):
  """SSDLite's extra block: 1x1 to features // 2, 3x3 depthwise stride 2, 1x1 to
  features; each conv with BatchNorm and ReLU6. f[B, H, W, C] -> f[B, ceil(H/2),
  ceil(W/2), features]."""
  features: int
  bn_epsilon: float = BN_EPSILON
  bn_momentum: float = BN_MOMENTUM
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv_bn = functools.partial(ConvBN, activation='relu6', bn_epsilon=self.bn_epsilon,
                                bn_momentum=self.bn_momentum, dtype=self.dtype,
                                param_dtype=self.param_dtype)
    half = self.features // 2
    x = conv_bn(half, 1, name='reduce')(x, train)
    x = conv_bn(half, 3, 2, depthwise=True, name='depthwise')(x, train)
    return conv_bn(self.features, 1, name='project')(x, train)


class MobileNetV3LargeFeatures(nn.Module):
  """MobileNetV3-Large + the SSDLite extra blocks: returns the 6 source maps.

  Submodules: features_0 (3x3 stride-2 stem, hardswish), features_1 ...
  features_15 (InvertedResidual), features_16 (1x1 conv, hardswish), extra_0 ...
  extra_3 (ExtraBlock), named like torchvision's MobileNetV3.features indices.

  Attributes:
    width_mult: MobileNetV3's channel multiplier (channels rounded to multiples
      of 8). It does not scale the extras: torchvision's ssdlite builder leaves
      its extractor's width_mult at 1, so give extra_channels explicitly.
    reduced_tail: halve the C4 block's output and the blocks after it (what
      torchvision builds without an ImageNet backbone); False is the ImageNet
      classifier's layout.
    extra_channels: output channels of the extra blocks.
  """
  width_mult: float = 1.0
  reduced_tail: bool = True
  extra_channels: Sequence[int] = SSDLITE_EXTRA_CHANNELS
  bn_epsilon: float = BN_EPSILON
  bn_momentum: float = BN_MOMENTUM
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False) -> list:
    """f[B, H, W, 3] in [-1, 1] -> [C4 expansion f[B, H/16, W/16, 672], last conv
    f[B, H/32, W/32, 480], then the extras' maps] (sizes rounded up)."""
    kw = dict(bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum, dtype=self.dtype,
              param_dtype=self.param_dtype)
    blocks = block_configs(self.width_mult, self.reduced_tail)
    x = images.astype(self.dtype)
    x = ConvBN(blocks[0].inputs, 3, 2, activation='hardswish', name='features_0', **kw)(x, train)
    outputs = []
    for i, config in enumerate(blocks, 1):
      block = InvertedResidual(config, name=f'features_{i}', **kw)
      if i == C4_BLOCK:
        expanded, x = block(x, train, return_expanded=True)
        outputs.append(expanded)
      else:
        x = block(x, train)
    x = ConvBN(LAST_CONV_EXPANSION * blocks[-1].out, 1, activation='hardswish',
               name=f'features_{len(blocks) + 1}', **kw)(x, train)
    outputs.append(x)
    for j, features in enumerate(self.extra_channels):
      x = ExtraBlock(features, name=f'extra_{j}', **kw)(x, train)
      outputs.append(x)
    return outputs


# --- the family ---------------------------------------------------------------------

# Names of the six source maps (model.sources), in network order.
SOURCES = ('features_13_expand', 'features_16', 'extra_0', 'extra_1', 'extra_2', 'extra_3')


class _SelectedSources(nn.Module):
  """MobileNetV3LargeFeatures returning only the maps named in `sources`."""
  features: MobileNetV3LargeFeatures
  sources: Sequence[str] = SOURCES

  def __call__(self, images, train: bool = False) -> list:
    maps = dict(zip(SOURCES, self.features(images, train)))
    return [maps[name] for name in self.sources]


def _backbone(model_cfg, settings, dtype, param_dtype) -> nn.Module:
  features = MobileNetV3LargeFeatures(
      width_mult=model_cfg.width, reduced_tail=settings.reduced_tail,
      extra_channels=tuple(settings.extra_channels), bn_epsilon=model_cfg.batch_norm_epsilon,
      bn_momentum=model_cfg.batch_norm_momentum, dtype=dtype, param_dtype=param_dtype)
  if tuple(model_cfg.sources) == SOURCES:
    return features
  return _SelectedSources(features, tuple(model_cfg.sources))


# MobileNetV3-Large with SSDLite's extra blocks; model.width is its width_mult.
PART = ssd.BackbonePart(
    settings=dict(
        reduced_tail=True,                          # torchvision without an ImageNet base
        extra_channels=SSDLITE_EXTRA_CHANNELS,      # the extra blocks' outputs
    ),
    layers=lambda settings: SOURCES,
    build=_backbone)

# torchvision's SSDLite default-box scales (fractions of the input): min_ratio
# 0.2 to max_ratio 0.95 over six maps, then 1.0 (the last map's s'_k).
SSDLITE_SCALES = tuple(SSDLITE_MIN_RATIO + (SSDLITE_MAX_RATIO - SSDLITE_MIN_RATIO) * k / 5
                       for k in range(6)) + (1.0,)

ARCHITECTURES = {
    # torchvision's ssdlite320_mobilenet_v3_large: MobileNetV3-Large (reduced tail)
    # with four extra blocks, the SSDLite head, BatchNorm as torchvision sets it,
    # inputs scaled to [-1, 1], its default boxes (scales 0.2 to 0.95, 1.0 for the
    # last level's second square box, sizes clipped to the image: 3234 boxes).
    'ssdlite320': dict(
        model=dict(image_size=IMAGE_SIZE, backbone='mobilenet_v3_large', head='ssdlite',
                   sources=SOURCES, batch_norm_momentum=BN_MOMENTUM,
                   batch_norm_epsilon=BN_EPSILON),
        anchors=dict(min_sizes=tuple(IMAGE_SIZE * s for s in SSDLITE_SCALES[:-1]),
                     max_sizes=tuple(IMAGE_SIZE * s for s in SSDLITE_SCALES[1:]),
                     steps=None, aspect_ratios=SSDLITE_ASPECT_RATIOS, clip='wh'),
        data=dict(mean_rgb=(127.5,) * 3, std_rgb=(127.5,) * 3),
    ),
}


# --- torchvision state dicts -> Flax variables (NumPy only) ---------------------------

_conv_bn = lambda sd, prefix: torch_weights.conv_bn(sd, f'{prefix}.0', f'{prefix}.1')  # noqa: E731
_conv, _merge = torch_weights.conv, torch_weights.merge


def _inverted_residual(sd: torch_weights.StateDict, prefix: str) -> dict:
  """'<prefix>.block.<j>' ([expand], depthwise, [SE], project) -> InvertedResidual's."""
  children = [f'{prefix}.block.{j}' for j in sd.indices(f'{prefix}.block')]
  se = [c for c in children if f'{c}.fc1.weight' in sd]
  convs = [c for c in children if c not in se]
  if len(convs) not in (2, 3) or len(se) > 1:
    raise ValueError(f'{prefix} is not a MobileNetV3 block: children {children}.')
  named = dict(zip(('expand',) * (len(convs) == 3) + ('depthwise', 'project'),
                   (_conv_bn(sd, c) for c in convs)))
  if se:
    named['se'] = _merge({'fc1': _conv(sd, f'{se[0]}.fc1'), 'fc2': _conv(sd, f'{se[0]}.fc2')})
  return _merge(named)


def _mobilenet_features(sd: torch_weights.StateDict) -> dict:
  """MobileNetV3 'features.<i>' (stem, blocks, last conv) -> {features_i: ...}."""
  indices = sd.indices('features')
  if indices != list(range(len(MOBILENET_V3_LARGE_BLOCKS) + 2)):
    raise ValueError(f'{sd.what}: expected MobileNetV3-Large features 0..16, found {indices}.')
  last = indices[-1]
  return {f'features_{i}': (_conv_bn(sd, f'features.{i}') if i in (0, last)
                            else _inverted_residual(sd, f'features.{i}'))
          for i in indices}


def _ssdlite_backbone_as_mobilenet(sd: torch_weights.StateDict) -> torch_weights.StateDict:
  """torchvision's SSDLite extractor splits MobileNetV3's features at the C4
  expansion: backbone.features.0 = features[:13] + features[13].block[0],
  backbone.features.1 = (features[13].block[1:], features[14:]). Renames those
  keys to the classifier's 'features.<i>[.block.<j>]' layout."""
  c4 = max(sd.indices('backbone.features.0'))
  renamed = {}
  for key, value in sd.tensors.items():
    m = re.match(r'backbone\.features\.([01])\.(\d+)\.(.*)', key)
    if not m:
      continue
    part, i, rest = m.group(1), int(m.group(2)), m.group(3)
    if part == '0':
      key = f'features.{c4}.block.0.{rest}' if i == c4 else f'features.{i}.{rest}'
    else:  # the block[1:] slice keeps its indices 1, 2, ...
      key = f'features.{c4}.block.{rest}' if i == 0 else f'features.{c4 + i}.{rest}'
    renamed[key] = value
  return sd.renamed(renamed)


def _tail_is_reduced(sd: torch_weights.StateDict) -> bool:
  """Whether the features' last conv is narrower than the C4 expansion (480 < 672
  reduced, 960 full at width 1)."""
  last = max(sd.indices('features'))
  return (sd[f'features.{last}.0.weight'].shape[0]
          < sd[f'features.{C4_BLOCK}.block.0.0.weight'].shape[0])


def torchvision_ssdlite320_variables(state_dict: Mapping[str, Any],
                                     num_classes: int = SSDLITE_NUM_CLASSES,
                                     source: str = 'the state dict') -> dict:
  """torchvision `ssdlite320_mobilenet_v3_large().state_dict()` (NumPy arrays) ->
  {'params': {'backbone', 'head'}, 'batch_stats': {'backbone', 'head'}} for
  MobileNetV3LargeFeatures (as `backbone`) and SSDLiteHead (as `head`).

  Classes stay in torchvision's order (num_classes outputs per box, 0 background;
  for COCO 91 category ids). num_batches_tracked entries are ignored.
  """
  sd = torch_weights.StateDict(state_dict, source, 'torchvision_ssdlite320_variables')
  backbone = _mobilenet_features(_ssdlite_backbone_as_mobilenet(sd))
  for j in sd.indices('backbone.extra'):
    backbone[f'extra_{j}'] = _merge({name: _conv_bn(sd, f'backbone.extra.{j}.{i}')
                                     for i, name in enumerate(('reduce', 'depthwise', 'project'))})
  head = {}
  for task, name in (('regression_head', 'reg'), ('classification_head', 'cls')):
    for i in sd.indices(f'head.{task}.module_list'):
      prefix = f'head.{task}.module_list.{i}'
      head[f'{name}_{i}'] = _merge({'depthwise': _conv_bn(sd, f'{prefix}.0'),
                                    'project': _conv(sd, f'{prefix}.1')})
  for i in sd.indices('head.classification_head.module_list'):
    reg = sd[f'head.regression_head.module_list.{i}.1.weight'].shape[0]
    cls = sd[f'head.classification_head.module_list.{i}.1.weight'].shape[0]
    if reg % 4 or cls != reg // 4 * num_classes:
      raise ValueError(f'source {i}: the class head has {cls} outputs for {reg // 4} boxes, not '
                       f'{reg // 4} x num_classes={num_classes}.')
  backbone, head = _merge(backbone), _merge(head)
  return torch_weights.variables({'backbone': backbone['params'], 'head': head['params']},
                    {'backbone': backbone['batch_stats'], 'head': head['batch_stats']})


def mobilenet_v3_large_variables(state_dict: Mapping[str, Any],
                                 reduced_tail: bool = False,
                                 source: str = 'the state dict') -> dict:
  """torchvision ImageNet `mobilenet_v3_large().state_dict()` -> {'params':
  {'backbone': {features_0 ... features_16}}, 'batch_stats': {'backbone': ...}}.

  Only the MobileNet layers: the extra blocks (and the head) keep their
  initialisation, and the classifier is dropped. ImageNet MobileNetV3 has the
  full tail, so the backbone must be built with reduced_tail=False (as
  torchvision does whenever weights_backbone is given); reduced_tail=True
  raises. torchvision feeds such a backbone the same [-1, 1] inputs, not the
  ImageNet mean/std ones it was trained on; nothing is folded here either.
  """
  sd = torch_weights.StateDict(state_dict, source, 'mobilenet_v3_large_variables')
  reduced = _tail_is_reduced(sd)
  if reduced != reduced_tail:
    have = 'a reduced tail' if reduced else 'the full tail (ImageNet MobileNetV3)'
    raise ValueError(f'the state dict has {have}; build the backbone with '
                     f'reduced_tail={reduced} to load it (torchvision\'s ssdlite uses '
                     f'reduced_tail=False with an ImageNet backbone).')
  backbone = _merge(_mobilenet_features(sd))
  return torch_weights.variables({'backbone': backbone['params']},
                                 {'backbone': backbone['batch_stats']})


def _load_ssdlite320(sd, options):
  """torchvision's COCO SSDLite320 -> its variables, classes in ssd_jax's order."""
  variables = torchvision_ssdlite320_variables(sd.tensors, source=sd.source)
  head = variables['params']['head']
  for name in head:
    if name.startswith('cls_'):
      head[name]['project'] = torch_weights.permute_classes(head[name]['project'],
                                                            labels.TORCHVISION_CLASS_ORDER)
  return variables, {}


def _imagenet_base():
  from ssd_jax import recipes
  config = recipes.preset('ssdlite320', 'voc')
  config.backbone.reduced_tail = False  # ImageNet MobileNetV3's layout
  return config


def _torchvision_ssdlite320_config():
  from ssd_jax import recipes
  return recipes.torchvision_ssdlite320()


CONVERTERS = {
    'torchvision_ssdlite320': ssd.Converter(
        _load_ssdlite320, config=_torchvision_ssdlite320_config,
        about="torchvision's ssdlite320_mobilenet_v3_large COCO detector (parameters and "
        'BatchNorm statistics), with recipes.torchvision_ssdlite320() reproducing its boxes, '
        'preprocessing and post-processing'),
    'mobilenet_v3_large': ssd.Converter(
        lambda sd, options: (mobilenet_v3_large_variables(sd.tensors, source=sd.source), {}),
        base=_imagenet_base,
        about="torchvision's ImageNet MobileNetV3-Large (its features, full tail): "
        'train with --config.backbone.reduced_tail=False; the extras and head start fresh'),
}

PUBLISHED = {
    'ssdlite320_mobilenet_v3_large_coco': ssd.Weights(
        'ssdlite320_mobilenet_v3_large_coco-a79551df.pth', 'a79551df', 'torchvision_ssdlite320',
        about="torchvision's SSDLite320-MobileNetV3-Large on COCO 2017, box AP 21.3"),
    'mobilenet_v3_large_imagenet': ssd.Weights(
        'mobilenet_v3_large-8738ca79.pth', '8738ca79', 'mobilenet_v3_large',
        about="torchvision's ImageNet MobileNetV3-Large (full tail: train with "
        '--config.backbone.reduced_tail=False)'),
}

FAMILY = ssd.Family(
    backbone='mobilenet_v3_large', part=PART, architectures=ARCHITECTURES,
    # XLA:CPU: YNNPACK for matrix products and reductions (BatchNorm's, around
    # the depthwise layers); xla_cpu.py has the measurements.
    compiler_options={'xla_cpu_experimental_ynn_fusion_type':
                      'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'},
    converters=CONVERTERS, published=PUBLISHED)
