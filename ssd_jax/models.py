"""SSD in Flax Linen: a backbone's source maps through a head, and the paper's parts.

`SSD` composes any backbone and head (ssd_jax/parts.py names them for configs).
The paper's parts live here: the VGG16 backbone with its extra layers (`Backbone`,
registered as 'vgg16') and the MultiBox head of 3x3 convolutions (`MultiBoxHead`,
'ssd'). Images are NHWC, normalised RGB (builders.normalise_images). Layer names
follow the paper (conv4_3, conv7, conv8_2, ...) so that converted checkpoints map
one to one.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssd_jax import layers

# What each parameter is for, by the module that owns it (builders.param_roles):
# 'weight' multiplies features (convolution and dense kernels, the L2Norm scale),
# 'bias' is added to them, 'norm' is a normalisation layer's own scale or offset.
ROLES = ('weight', 'bias', 'norm')

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


def check_sources(sources: Sequence[str], order: Sequence[str]) -> None:
  """ValueError unless `sources` are distinct names from `order`, in its order."""
  if (any(s not in order for s in sources) or len(set(sources)) != len(sources)
      or list(sources) != sorted(sources, key=list(order).index)):
    raise ValueError(f'model.sources={tuple(sources)} must be distinct layer names in network '
                     f'order, chosen from {tuple(order)}.')


# Caffe's "xavier" filler, which the released recipe gives every new layer:
# uniform in +-sqrt(3 / fan_in), i.e. variance 1 / fan_in (fan_in = kh kw c_in).
# Biases start at 0 (Flax's default).
caffe_xavier = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


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


class Backbone(nn.Module):
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
    check_sources(self.sources, layer_order(self.extras))
    plain = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=caffe_xavier, use_bias=not self.batch_norm,
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


class MultiBoxHead(nn.Module):
  """Per source: a 3x3 conv for k*4 box offsets and one for k*C class scores.

  Outputs are flattened source by source, then row, column and box, which is the
  order of `anchors.default_boxes`.
  """
  num_classes: int
  boxes_per_location: Sequence[int]
  names: Sequence[str]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence, train: bool = False) -> tuple:
    """list of f[B, h, w, c] -> (f32[B, A, 4] offsets, f32[B, A, C] logits)."""
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=_pad(1), dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=caffe_xavier,
                             conv_general_dilated=layers.conv_general_dilated)
    locs, logits = [], []
    for x, k, name in zip(features, self.boxes_per_location, self.names, strict=True):
      b = x.shape[0]
      locs.append(conv(k * 4, name=f'{name}_loc')(x).reshape(b, -1, 4))
      logits.append(conv(k * self.num_classes, name=f'{name}_conf')(x)
                    .reshape(b, -1, self.num_classes))
    return (jnp.concatenate(locs, 1).astype(jnp.float32),
            jnp.concatenate(logits, 1).astype(jnp.float32))


class SSD(nn.Module):
  """The whole detector: a backbone's source maps through a head.

  Call with f[B, S, S, 3] normalised RGB images (builders.normalise_images);
  returns float32 box offsets [B, A, 4] (encoded against the default boxes, see
  box_utils.encode) and class logits [B, A, num_classes], class 0 being
  background. `train` selects batch statistics in BatchNorm layers (their
  running averages are then updated: apply with mutable=['batch_stats']).
  """
  backbone: nn.Module
  head: nn.Module

  def __call__(self, images, train: bool = False):
    return self.head(self.backbone(images, train=train), train=train)


# --- the parts, as ssd_jax/parts.py registers them ---------------------------

@dataclasses.dataclass(frozen=True)
class BackbonePart:
  """A backbone as configs name it.

  Attributes:
    settings: defaults of its config section `backbone` (config_lib.base_config).
    layers: backbone settings -> the names of the layers that can be
      prediction sources (model.sources), in network order.
    build: (model config, backbone settings, dtype, param_dtype) -> the module,
      called as module(images, train) -> one map per source.
  """
  settings: Mapping[str, Any]
  layers: Callable[[Any], tuple[str, ...]]
  build: Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class HeadPart:
  """A head as configs name it: build(model config, boxes per location, dtype,
  param_dtype) -> the module, called as module(maps, train) -> (offsets, logits)."""
  build: Callable[..., nn.Module]


def _vgg16(model_cfg, settings, dtype, param_dtype) -> Backbone:
  return Backbone(sources=tuple(model_cfg.sources), extras=settings.extras,
                  width=model_cfg.width, atrous=settings.atrous,
                  fc_features=settings.fc_features, l2norm_scale=settings.l2norm_scale,
                  batch_norm=settings.batch_norm, bn_momentum=model_cfg.batch_norm_momentum,
                  bn_epsilon=model_cfg.batch_norm_epsilon, dtype=dtype, param_dtype=param_dtype)


def _multibox_head(model_cfg, boxes_per_location, dtype, param_dtype) -> MultiBoxHead:
  return MultiBoxHead(model_cfg.num_classes, boxes_per_location, tuple(model_cfg.sources),
                      dtype, param_dtype)


# The paper's VGG16 (reduced, atrous) with SSD300's or SSD512's extra layers.
VGG16 = BackbonePart(
    settings=dict(
        extras='ssd300',        # layout of the extra layers: EXTRA_LAYERS
        atrous=True,            # pool5 3x3/1 + dilated conv6
        fc_features=1024,       # conv6 / conv7 channels
        l2norm_scale=20.0,      # initial conv4_3 L2Norm scale
        batch_norm=False,       # BatchNorm after every conv (from-scratch training)
    ),
    layers=lambda settings: layer_order(settings.extras),
    build=_vgg16)
MULTIBOX_HEAD = HeadPart(build=_multibox_head)
