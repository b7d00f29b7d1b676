"""ssd_jax.layers: the CPU pooling gradient and depthwise convolutions equal XLA's
(and a hand-computed tie case)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import layers

NHWC = ('NHWC', 'HWIO', 'NHWC')


def test_several_devices_keep_xlas_gradients():
  assert jax.device_count() == 8, 'conftest sets 8 simulated CPU devices'
  assert not layers.cpu_gradients_apply()


def _grads(conv, x, w):
  """Gradients of a non-linear function of the convolution's output."""
  return jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1))(x, w)


@pytest.mark.parametrize('size,window,stride,padding', [
    (8, 2, 2, ((0, 0), (0, 0))),    # pool1..pool4 on even maps
    (75, 2, 2, ((0, 1), (0, 1))),   # Caffe's ceil mode: 75 -> 38
    (9, 3, 1, ((1, 1), (1, 1))),    # pool5: 3x3 stride 1, overlapping windows
])
def test_max_pool_gradient_equals_xla(size, window, stride, padding, cpu_path):
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, size, size, 3)), jnp.float32)

  def xla(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                 (1, stride, stride, 1), ((0, 0), *padding, (0, 0)))

  def ours(x):
    return layers.max_pool(x, (window, window), (stride, stride), padding)

  np.testing.assert_array_equal(ours(x), xla(x))
  assert 'platform_index' in str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(ours(x))))(x))
  loss = lambda pool: lambda x: jnp.sum(jnp.sin(pool(x)))  # noqa: E731
  np.testing.assert_allclose(jax.grad(loss(ours))(x), jax.grad(loss(xla))(x), rtol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum(cpu_path):
  """A window of equal values: PyTorch and Caffe give the whole gradient to its
  first (top-left) element, never split or duplicated."""
  x = jnp.ones((1, 2, 4, 1), jnp.float32).at[0, 1, 3, 0].set(2.0)
  grad = jax.grad(lambda x: jnp.sum(layers.max_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
                                    * jnp.array([3.0, 5.0])[None, None, :, None]))(x)
  want = np.zeros((1, 2, 4, 1))
  want[0, 0, 0, 0] = 3.0   # tie: the first of four ones
  want[0, 1, 3, 0] = 5.0   # the single maximum
  np.testing.assert_array_equal(grad, want)


@pytest.mark.parametrize('kernel,stride,pad', [(3, 1, 1), (3, 2, 1), (5, 2, 2), (5, 1, 2)])
def test_depthwise_shifted_equals_xlas_grouped_convolution(kernel, stride, pad):
  """Values and both gradients, odd sizes included (stride 2 over 11 pixels)."""
  rng = np.random.default_rng(kernel + stride)
  x = jnp.asarray(rng.normal(size=(2, 11, 9, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
  pads = ((pad, pad), (pad, pad))

  def xla(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=NHWC,
                                        feature_group_count=6)

  def ours(x, w):
    return layers.conv_general_dilated(x, w, (stride, stride), pads,
                                       dimension_numbers=jax.lax.conv_dimension_numbers(
                                           x.shape, w.shape, NHWC), feature_group_count=6)

  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers.depthwise_shifted(x, w, (stride, stride), pads), xla(x, w),
                             rtol=1e-5, atol=1e-5)
  for a, b in zip(_grads(ours, x, w), _grads(xla, x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unfused_hard_swish_is_the_same_function():
  """x * relu6(x + 3) / 6, against NumPy, written either way (the unfused form is
  what a full-int8 TFLite export traces)."""
  x = np.linspace(-5, 5, 1001, dtype=np.float32)
  expected = x * np.clip(x + 3, 0, 6) / 6
  np.testing.assert_allclose(np.asarray(layers.hard_swish(jnp.asarray(x))), expected,
                             rtol=1e-6, atol=1e-7)
  with layers.unfused_hard_swish():
    unfused = np.asarray(layers.hard_swish(jnp.asarray(x)))
  np.testing.assert_allclose(unfused, expected, rtol=1e-6, atol=1e-7)
  assert not layers.UNFUSED_HARD_SWISH  # the context put it back
