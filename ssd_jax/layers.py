"""Max pooling whose gradient, and depthwise convolutions, run fast on XLA:CPU;
and ConvBN, the conv + BatchNorm + activation unit of the BatchNorm families.

The forward passes are XLA's own (`lax.reduce_window`, `lax.conv_general_dilated`)
except for depthwise convolutions on CPU:

- XLA:CPU runs max pooling's gradient as select-and-scatter, many times the forward's
  time (batch 8, SSD300's pools: 14x to 58x; 980 ms for pool1 against 17). Here it is
  one masked shift per window offset (165 ms): each output's gradient goes to the
  first input (row-major in the window) equal to the maximum, as Caffe and
  PyTorch do.
- XLA:CPU runs depthwise (grouped) convolutions several times slower than the
  same arithmetic written out: on CPU they are kh*kw shifted multiply-adds
  (depthwise_shifted), forward and backward (SSDLite320 inference 4.5 -> 23.7
  images/s at batch 1 on a 2-core CPU, experiments/bench_inference.py).

Other convolutions are lax's, forward and backward. Their speed on CPU comes
from the compiler options in xla_cpu.py (XLA's own convolution kernels): with
those, XLA's weight gradient is faster than the im2col matrix products this
module used to compute it with under XLA's defaults (experiments/bench_layer_grads.py).

On GPU and TPU (`jax.lax.platform_dependent`), XLA's pooling gradient is used
unchanged, and so it is with several CPU devices (simulated ones in tests, or
several processes), where a row-block loop this module once ran beside XLA:CPU's
cross-device all-reduce aborted train steps with a collective rendezvous timeout.
`experiments/bench_train.py --xla_gradients` measures the train step without it.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')
Pads = tuple[tuple[int, int], tuple[int, int]]

# Set False to use XLA's pooling gradient on every platform (benchmarks compare both).
USE_CPU_GRADIENTS = True
# Set False to run depthwise convolutions as XLA's grouped convolution on CPU too.
USE_CPU_DEPTHWISE = True


@contextlib.contextmanager
def grouped_depthwise():
  """While tracing inside it, depthwise convolutions stay XLA's grouped convolution
  on every platform: what TFLite and ONNX lower to their own depthwise kernels
  (the shifted multiply-adds become hundreds of slices there)."""
  global USE_CPU_DEPTHWISE
  saved, USE_CPU_DEPTHWISE = USE_CPU_DEPTHWISE, False
  try:
    yield
  finally:
    USE_CPU_DEPTHWISE = saved


# Set True to write hard-swish as relu6(x + 3) * x * (1 / 6) (see unfused_hard_swish).
UNFUSED_HARD_SWISH = False


@contextlib.contextmanager
def unfused_hard_swish():
  """While tracing inside it, hard-swish is written relu6(x + 3) * x * (1 / 6):
  the same function, which TFLite's converter keeps as an ADD (relu6 fused) and
  a MUL instead of fusing it into HARD_SWISH. XNNPACK takes no int8 HARD_SWISH,
  so in a full-integer model each of SSDLite's 20 splits the network between
  XNNPACK and TFLite's own kernels; written this way, all of it runs in XNNPACK."""
  global UNFUSED_HARD_SWISH
  saved, UNFUSED_HARD_SWISH = UNFUSED_HARD_SWISH, True
  try:
    yield
  finally:
    UNFUSED_HARD_SWISH = saved


def hard_swish(x):
  """x * relu6(x + 3) / 6 (torch's Hardswish); see unfused_hard_swish."""
  if UNFUSED_HARD_SWISH:
    return nn.relu6(x + 3.0) * x * (1.0 / 6.0)
  return nn.hard_swish(x)


def cpu_gradients_apply() -> bool:
  """Whether the CPU pooling gradient is used: on, and not several devices (see the module doc)."""
  return USE_CPU_GRADIENTS and jax.device_count() == 1


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
  want = lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)
  return lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) == want


def depthwise_shifted(x, w, strides: tuple[int, int], padding: Pads):
  """A depthwise NHWC convolution as kh*kw shifted multiply-adds.

  Args:
    x: f[B, H, W, C]; w: f[kh, kw, 1, C] (HWIO with one input channel per
      group); strides: (sh, sw); padding: ((top, bottom), (left, right)), zeros.
  Returns:
    f[B, Ho, Wo, C], equal to lax.conv_general_dilated with feature_group_count=C
    (up to float rounding: the sum runs in another order).
  """
  kh, kw = w.shape[:2]
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  (sh, sw), (hp, wp) = strides, xp.shape[1:3]
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      window = lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (ho - 1) * sh + 1,
                                            j + (wo - 1) * sw + 1, xp.shape[3]), (1, sh, sw, 1))
      term = window * w[i, j, 0]
      out = term if out is None else out + term
  return out


def _depthwise_pair(strides: tuple[int, int], pads: Pads, element_type):
  """(CPU, elsewhere) forms of one depthwise NHWC convolution: (x, w) -> y."""
  def xla(x, w):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                    feature_group_count=x.shape[-1],
                                    preferred_element_type=element_type)
  return (lambda x, w: depthwise_shifted(x, w, strides, pads)), xla


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, w, strides, pads, element_type):
  """A depthwise convolution, the platform's form forward and backward. Each
  direction is its own lax.platform_dependent: differentiating one through its
  branches (a cond) took most of the time SSDLite's train step traces in."""
  cpu, xla = _depthwise_pair(strides, pads, element_type)
  return lax.platform_dependent(x, w, cpu=cpu, default=xla)


def _depthwise_fwd(x, w, strides, pads, element_type):
  return _depthwise(x, w, strides, pads, element_type), (x, w)


def _depthwise_bwd(strides, pads, element_type, residuals, g):
  cpu, xla = _depthwise_pair(strides, pads, element_type)

  def pullback(fun):
    return lambda x, w, g: jax.vjp(fun, x, w)[1](g)

  return lax.platform_dependent(*residuals, g, cpu=pullback(cpu), default=pullback(xla))


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _is_depthwise(lhs, rhs, feature_group_count, lhs_dilation, rhs_dilation, padding) -> bool:
  return (feature_group_count > 1 and lhs.ndim == 4 and rhs.ndim == 4
          and lhs.shape[-1] == feature_group_count == rhs.shape[-1] and rhs.shape[2] == 1
          and not isinstance(padding, str)
          and all(v == 1 for v in (lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1))))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, **kwargs):
  """`lax.conv_general_dilated`, but on CPU depthwise NHWC convolutions are shifted
  multiply-adds (depthwise_shifted: XLA:CPU runs grouped convolutions far slower,
  measured by experiments/bench_inference.py on SSDLite320); the rest go to lax as is.
  Pass as `nn.Conv(..., conv_general_dilated=conv_general_dilated)`."""
  if (USE_CPU_DEPTHWISE and _is_depthwise(lhs, rhs, feature_group_count, lhs_dilation,
                                          rhs_dilation, padding)
      and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape) and not kwargs.get('precision')):
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(int(v) for v in window_strides)
    return _depthwise(lhs, rhs, strides, pads, kwargs.get('preferred_element_type'))
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, **kwargs)


def _plain_pool(x, window, strides, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


def pool_grad(x, y, g, window: tuple[int, int], strides: tuple[int, int], padding: Pads):
  """Gradient of NHWC max pooling without select-and-scatter.

  Args:
    x: f[B, H, W, C] the input; y, g: f[B, Ho, Wo, C] the pooled output and its
      gradient; window, strides: (h, w); padding: ((top, bottom), (left, right)),
      padded with -inf.
  Returns:
    f[B, H, W, C]: each g goes to the first input of its window (row-major) that
    equals the maximum.
  """
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  (b, hp, wp, c), (ho, wo) = xp.shape, y.shape[1:3]
  (sh, sw), span = strides, ((ho - 1) * strides[0] + 1, (wo - 1) * strides[1] + 1)
  taken = jnp.zeros(y.shape, bool)
  grad = jnp.zeros(xp.shape, g.dtype)
  for i in range(window[0]):
    for j in range(window[1]):
      seen = lax.slice(xp, (0, i, j, 0), (b, i + span[0], j + span[1], c), (1, sh, sw, 1))
      hit = (seen == y) & ~taken
      taken = taken | hit
      spread = ((0, 0, 0), (i, hp - i - span[0], sh - 1), (j, wp - j - span[1], sw - 1), (0, 0, 0))
      grad = grad + lax.pad(jnp.where(hit, g, jnp.zeros_like(g)), jnp.zeros((), g.dtype), spread)
  (top, _), (left, _) = padding
  return grad[:, top:top + x.shape[1], left:left + x.shape[2]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _pool(x, window, strides, padding):
  return _plain_pool(x, window, strides, padding)


def _pool_fwd(x, window, strides, padding):
  y = _plain_pool(x, window, strides, padding)
  return y, (x, y)


def _pool_bwd(window, strides, padding, residuals, g):
  x, y = residuals

  def xla(x, y, g):
    return jax.vjp(lambda x: _plain_pool(x, window, strides, padding), x)[1](g)[0]

  def cpu(x, y, g):
    return pool_grad(x, y, g, window, strides, padding)

  return (lax.platform_dependent(x, y, g, cpu=cpu, default=xla),)


_pool.defvjp(_pool_fwd, _pool_bwd)


def max_pool(x, window: Sequence[int], strides: Sequence[int], padding: Sequence[Sequence[int]],
             nonnegative: bool = False):
  """f[B, H, W, C] -> f[B, Ho, Wo, C]: max pooling with explicit (-inf) padding,
  as `flax.linen.max_pool`, with the CPU gradient above.

  nonnegative: x >= 0 (it comes out of a ReLU), so padding with 0 gives the same
  maximum; it is padded so. A -inf padding that TFLite cannot fold into its
  pooling (not SAME, as ResNet's 3x3 stride-2 pad-1 stem pool) becomes a PADV2
  whose -inf a full-int8 calibration takes into the pooled tensor's range
  (scale 1e36: every value one integer; XNNPACK then refuses the model)."""
  if nonnegative:
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    padding = ((0, 0), (0, 0))
  args = (tuple(window), tuple(strides), tuple((int(lo), int(hi)) for lo, hi in padding))
  if not cpu_gradients_apply():
    return _plain_pool(x, *args)
  return _pool(x, *args)


ACTIVATIONS = {
    'none': lambda x: x,
    'relu': nn.relu,
    'relu6': nn.relu6,
    'hardswish': hard_swish,
}


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm -> activation: torchvision's Conv2dNormActivation.

  Submodules 'conv' (kernel [k, k, C_in, features], or [k, k, 1, C] depthwise)
  and 'bn'. Pads `padding` on all four sides, by default (k - 1) // 2 as
  PyTorch's layers do (not 'SAME', which pads stride-2 layers on one side only):
  f[B, H, W, C_in] -> f[B, (H + 2p - k) // stride + 1, ..., features].
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  depthwise: bool = False
  activation: str = 'none'
  padding: Optional[int] = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  bn_epsilon: float = 1e-5
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k, s = self.kernel_size, self.strides
    p = (k - 1) // 2 if self.padding is None else self.padding
    if self.depthwise and x.shape[-1] != self.features:
      raise ValueError(f'a depthwise conv keeps its {x.shape[-1]} channels, not {self.features}.')
    x = nn.Conv(self.features, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                feature_group_count=x.shape[-1] if self.depthwise else 1, use_bias=False,
                kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
                conv_general_dilated=conv_general_dilated, name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                     name='bn')(x)
    return ACTIVATIONS[self.activation](x)
