"""Convolution and max pooling whose gradients (and depthwise convolutions) run fast on XLA:CPU.

The forward passes are XLA's own (`lax.conv_general_dilated`, `lax.reduce_window`);
only the gradients differ, and only on CPU:

- XLA:CPU computes a convolution's weight gradient as a convolution whose window
  is the whole feature map, which runs at a fraction of the forward pass's rate
  (measured at batch 8: 19 GFLOP/s at 150x150x128 against 87 for the forward).
  Here it is a sum of matrix products, one per block of output rows of an image:
  the im2col patches [rows*Wo, kh*kw*C] transposed times the output gradient
  [rows*Wo, D] (blocks of about 4 MiB of patches, to stay in cache).
- XLA:CPU runs max pooling's gradient as select-and-scatter, ~25x the forward's
  time for SSD's pool1. Here it is one masked shift per window offset: each
  output's gradient goes to the first input (row-major in the window) equal to
  the maximum, as Caffe and PyTorch do.

- XLA:CPU runs depthwise (grouped) convolutions several times slower than the
  same arithmetic written out: on CPU they are kh*kw shifted multiply-adds
  (depthwise_shifted), forward and backward (SSDLite320 inference 4.5 -> 23.7
  images/s at batch 1 on a 2-core CPU, experiments/bench_inference.py).

On GPU and TPU (`jax.lax.platform_dependent`), XLA's gradients are used unchanged,
and so they are with several CPU devices (simulated ones in tests, or several
processes): there the row-block loop beside XLA:CPU's cross-device all-reduce
aborted train steps with a collective rendezvous timeout in our tests.
`experiments/bench_train.py` measures the train step with and without these.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')
Pads = tuple[tuple[int, int], tuple[int, int]]

# Set False to use XLA's gradients on every platform (benchmarks compare both).
USE_CPU_GRADIENTS = True
# Set False to run depthwise convolutions as XLA's grouped convolution on CPU too.
USE_CPU_DEPTHWISE = True
# Feature maps smaller than this (pixels) keep XLA's weight gradient, which is the
# faster one there (batch 8, 19x19x512: 73 ms against 109 for the matrix products).
MIN_PIXELS = 32 * 32


def _plain_conv(x, w, padding: Pads, dilation: tuple[int, int]):
  return lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=dilation,
                                  dimension_numbers=_NHWC)


def _patches(rows, kernel: tuple[int, int], dilation: tuple[int, int], out: tuple[int, int]):
  """f[R + (kh-1) dh, Wo + (kw-1) dw, C] padded input rows -> f[R*Wo, kh*kw*C]: each
  output pixel's window (im2col) for R = out[0] output rows."""
  (kh, kw), (dh, dw), (r, wo) = kernel, dilation, out
  cols = [rows[i * dh:i * dh + r, j * dw:j * dw + wo] for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, -1).reshape(r * wo, -1)


# Bytes of im2col patches per matrix product: measured fastest on a 2-core CPU for
# VGG's layers (1 MiB to 16 MiB within 10%; whole images 1.4x slower at 300x300x64).
PATCH_BYTES = 4 << 20


def _rows_per_block(out_rows: int, row_bytes: int) -> int:
  """The largest divisor of out_rows whose patches fit PATCH_BYTES (at least 1)."""
  fits = [r for r in range(1, out_rows + 1) if out_rows % r == 0 and r * row_bytes <= PATCH_BYTES]
  return max(fits, default=1)


def conv_weight_grad(x, g, kernel_shape, padding: Pads, dilation=(1, 1)):
  """Weight gradient of a stride-1 NHWC/HWIO convolution, as matrix products.

  Args:
    x: f[B, H, W, C] the convolution's input; g: f[B, Ho, Wo, D] the gradient
      of its output; kernel_shape: (kh, kw, C, D); padding: ((top, bottom),
      (left, right)); dilation: the kernel's (dh, dw).
  Returns:
    f32[kh, kw, C, D]: the sum over blocks of R output rows of one image of
    patches[R*Wo, kh*kw*C]^T @ g[R*Wo, D], accumulated in float32 (R chosen so a
    block's patches take about PATCH_BYTES).
  """
  kh, kw, c, d = kernel_shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  ho, wo = g.shape[1:3]
  r = _rows_per_block(ho, wo * kh * kw * c * x.dtype.itemsize)
  blocks, span = ho // r, r + (kh - 1) * dilation[0]

  def add_block(total, k):
    b, i = k // blocks, k % blocks
    rows = lax.dynamic_slice(xp, (b, i * r, 0, 0), (1, span) + xp.shape[2:])[0]
    grad = lax.dynamic_slice(g, (b, i * r, 0, 0), (1, r, wo, d))[0]
    cols = _patches(rows, (kh, kw), dilation, (r, wo))
    return total + jnp.dot(cols.T, grad.reshape(-1, d), preferred_element_type=jnp.float32), None

  total, _ = lax.scan(add_block, jnp.zeros((kh * kw * c, d), jnp.float32),
                      jnp.arange(x.shape[0] * blocks))
  return total.reshape(kh, kw, c, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, padding: Pads, dilation: tuple[int, int]):
  return _plain_conv(x, w, padding, dilation)


def _conv_fwd(x, w, padding, dilation):
  return _plain_conv(x, w, padding, dilation), (x, w)


def _conv_bwd(padding, dilation, residuals, g):
  x, w = residuals

  def xla(x, w, g):
    return jax.vjp(lambda x, w: _plain_conv(x, w, padding, dilation), x, w)[1](g)

  def cpu(x, w, g):
    dx = jax.vjp(lambda x: _plain_conv(x, w, padding, dilation), x)[1](g)[0]
    return dx, conv_weight_grad(x, g, w.shape, padding, dilation).astype(w.dtype)

  return lax.platform_dependent(x, w, g, cpu=cpu, default=xla)


_conv.defvjp(_conv_fwd, _conv_bwd)


def cpu_gradients_apply() -> bool:
  """Whether the CPU gradients are used: on, and not several devices (see the module doc)."""
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


def _is_depthwise(lhs, rhs, feature_group_count, lhs_dilation, rhs_dilation, padding) -> bool:
  return (feature_group_count > 1 and lhs.ndim == 4 and rhs.ndim == 4
          and lhs.shape[-1] == feature_group_count == rhs.shape[-1] and rhs.shape[2] == 1
          and not isinstance(padding, str)
          and all(v == 1 for v in (lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1))))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, **kwargs):
  """`lax.conv_general_dilated`, with the CPU weight gradient above for the stride-1,
  explicitly padded NHWC convolutions of SSD's large maps, and, on CPU, depthwise
  NHWC convolutions as shifted multiply-adds (depthwise_shifted: XLA:CPU runs
  grouped convolutions far slower, measured by experiments/bench_inference.py on
  SSDLite320); the rest go to lax as is.
  Pass as `nn.Conv(..., conv_general_dilated=conv_general_dilated)`."""
  if (USE_CPU_DEPTHWISE and _is_depthwise(lhs, rhs, feature_group_count, lhs_dilation,
                                          rhs_dilation, padding)
      and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape) and not kwargs.get('precision')):
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(int(v) for v in window_strides)

    def xla(x, w):
      return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                      feature_group_count=feature_group_count,
                                      preferred_element_type=kwargs.get('preferred_element_type'))

    return lax.platform_dependent(lhs, rhs, cpu=lambda x, w: depthwise_shifted(x, w, strides, pads),
                                  default=xla)
  simple = (cpu_gradients_apply() and tuple(window_strides) == (1, 1)
            and not isinstance(padding, str)
            and lhs.ndim == 4 and lhs.shape[1] * lhs.shape[2] >= MIN_PIXELS
            and all(v == 1 for v in (lhs_dilation or (1, 1))) and feature_group_count == 1
            and not kwargs.get('precision') and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape))
  if not simple:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, **kwargs)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, pads, tuple(int(v) for v in (rhs_dilation or (1, 1))))


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


def max_pool(x, window: Sequence[int], strides: Sequence[int], padding: Sequence[Sequence[int]]):
  """f[B, H, W, C] -> f[B, Ho, Wo, C]: max pooling with explicit (-inf) padding,
  as `flax.linen.max_pool`, with the CPU gradient above."""
  args = (tuple(window), tuple(strides), tuple((int(lo), int(hi)) for lo, hi in padding))
  if not cpu_gradients_apply():
    return _plain_pool(x, *args)
  return _pool(x, *args)
