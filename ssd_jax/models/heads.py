"""The heads families share: the paper's MultiBox head and SSDLite's.

A head maps the backbone's source maps to f32[B, A, 4] box offsets and
f32[B, A, C] class logits, flattened map by map, then row, column and box:
the order of anchors.default_boxes. Offsets are (dx, dy, dw, dh) per box, as
box_utils.encode (and torchvision's BoxCoder) write them.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax import layers
from ssd_jax.models import ssd

Dtype = Any

# Caffe's "xavier" filler, which the released recipe gives every new layer:
# uniform in +-sqrt(3 / fan_in), i.e. variance 1 / fan_in (fan_in = kh kw c_in).
# Biases start at 0 (Flax's default).
caffe_xavier = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def torch_conv_bias(fan_in: int) -> Callable:
  """PyTorch's default init of a conv bias, uniform in +-1 / sqrt(fan_in)
  (fan_in = kh kw c_in), as an initializer of that conv's bias."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# torchvision's SSDLite _normal_init: normal(0, 0.03) for every conv weight, biases 0.
SSDLITE_INIT = nn.initializers.normal(stddev=0.03)


def _flatten(outputs: Sequence, last: int):
  """Per map f[B, h, w, k * last] -> f32[B, sum h w k, last]."""
  return jnp.concatenate([x.reshape(x.shape[0], -1, last) for x in outputs], 1).astype(
      jnp.float32)


class MultiBoxHead(nn.Module):
  """Per source: a 3x3 conv (bias, padding 1) for k*4 box offsets, '<name>_loc',
  and one for k*C class scores, '<name>_conf'. Biases start at 0, or from
  bias_init(fan_in) where given (e.g. torch_conv_bias)."""
  num_classes: int
  boxes_per_location: Sequence[int]
  names: Sequence[str]
  kernel_init: Callable = caffe_xavier
  bias_init: Optional[Callable[[int], Callable]] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence, train: bool = False) -> tuple:
    """list of f[B, h, w, c] -> (f32[B, A, 4] offsets, f32[B, A, C] logits)."""
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             kernel_init=self.kernel_init,
                             conv_general_dilated=layers.conv_general_dilated)
    locs, logits = [], []
    for x, k, name in zip(features, self.boxes_per_location, self.names, strict=True):
      bias = {} if self.bias_init is None else {'bias_init': self.bias_init(9 * x.shape[-1])}
      locs.append(conv(k * 4, name=f'{name}_loc', **bias)(x))
      logits.append(conv(k * self.num_classes, name=f'{name}_conf', **bias)(x))
    return _flatten(locs, 4), _flatten(logits, self.num_classes)


class PredictionBlock(nn.Module):
  """SSDLite's predictor: 3x3 depthwise + BatchNorm + ReLU6, then a 1x1 conv with
  bias to `features` outputs. f[B, H, W, C] -> f[B, H, W, features]."""
  features: int
  bn_epsilon: float = 1e-3
  bn_momentum: float = 0.97
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = layers.ConvBN(x.shape[-1], 3, depthwise=True, activation='relu6',
                      kernel_init=SSDLITE_INIT, bn_epsilon=self.bn_epsilon,
                      bn_momentum=self.bn_momentum, dtype=self.dtype,
                      param_dtype=self.param_dtype, name='depthwise')(x, train)
    return nn.Conv(self.features, (1, 1), kernel_init=SSDLITE_INIT, dtype=self.dtype,
                   param_dtype=self.param_dtype, name='project')(x)


class SSDLiteHead(nn.Module):
  """Per source map i: reg_i (k*4 box offsets) and cls_i (k*C logits), each a
  PredictionBlock, as torchvision's SSDLiteHead."""
  num_classes: int
  boxes_per_location: Sequence[int]
  bn_epsilon: float = 1e-3
  bn_momentum: float = 0.97
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence, train: bool = False) -> tuple:
    """list of f[B, h, w, c] -> (f32[B, A, 4] offsets, f32[B, A, C] logits)."""
    block = functools.partial(PredictionBlock, bn_epsilon=self.bn_epsilon,
                              bn_momentum=self.bn_momentum, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    locs, logits = [], []
    for i, (x, k) in enumerate(zip(features, self.boxes_per_location, strict=True)):
      locs.append(block(k * 4, name=f'reg_{i}')(x, train))
      logits.append(block(k * self.num_classes, name=f'cls_{i}')(x, train))
    return _flatten(locs, 4), _flatten(logits, self.num_classes)


def multibox(kernel_init: Callable = caffe_xavier,
             bias_init: Optional[Callable[[int], Callable]] = None) -> ssd.HeadPart:
  """The MultiBox head as a part, its convolutions initialised by kernel_init and
  bias_init (MultiBoxHead)."""
  def build(model_cfg, boxes_per_location, dtype, param_dtype) -> MultiBoxHead:
    return MultiBoxHead(model_cfg.num_classes, boxes_per_location, tuple(model_cfg.sources),
                        kernel_init, bias_init, dtype, param_dtype)
  return ssd.HeadPart(build=build)


def _ssdlite(model_cfg, boxes_per_location, dtype, param_dtype) -> SSDLiteHead:
  return SSDLiteHead(model_cfg.num_classes, boxes_per_location, model_cfg.batch_norm_epsilon,
                     model_cfg.batch_norm_momentum, dtype, param_dtype)


HEADS = {
    'ssd': multibox(),                          # the paper's: 3x3 convs, Caffe's xavier
    'ssdlite': ssd.HeadPart(build=_ssdlite),    # per source: 3x3 depthwise + BN + ReLU6, 1x1
}
