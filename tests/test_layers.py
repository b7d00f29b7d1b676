"""ssd_jax.layers: the CPU gradients equal XLA's (and a hand-computed tie case)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import layers

NHWC = ('NHWC', 'HWIO', 'NHWC')


def test_several_devices_keep_xlas_gradients():
  assert jax.device_count() == 8, 'conftest sets 8 simulated CPU devices'
  assert not layers.cpu_gradients_apply()


@pytest.fixture
def cpu_path(monkeypatch):
  """The CPU gradients on for these tests' small maps, whatever the device count
  (no collectives run here)."""
  monkeypatch.setattr(layers, 'MIN_PIXELS', 0)
  monkeypatch.setattr(layers, 'cpu_gradients_apply', lambda: layers.USE_CPU_GRADIENTS)


def _grads(conv, x, w):
  """Gradients of a non-linear function of the convolution's output."""
  return jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1))(x, w)


@pytest.mark.parametrize('kernel,pad,dilation,channels', [
    (3, 1, 1, (3, 5)),    # VGG's 3x3 pad 1
    (3, 6, 6, (4, 6)),    # conv6: dilated by 6
    (1, 0, 1, (5, 3)),    # 1x1
    (3, 0, 1, (2, 4)),    # SSD300's unpadded conv10_2 / conv11_2
])
def test_conv_gradients_equal_xla(kernel, pad, dilation, channels, cpu_path):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 11, 9, channels[0])), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel) + channels), jnp.float32)
  padding = ((pad, pad), (pad, pad))

  def ours(x, w):
    return layers.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=(dilation,) * 2,
                                       dimension_numbers=NHWC)

  def xla(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=(dilation,) * 2,
                                        dimension_numbers=NHWC)

  np.testing.assert_array_equal(ours(x, w), xla(x, w))
  assert 'platform_index' in str(jax.make_jaxpr(lambda x, w: _grads(ours, x, w))(x, w))
  for got, want in zip(_grads(ours, x, w), _grads(xla, x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('patch_bytes', [1, 900, layers.PATCH_BYTES])  # rows 1, 2 or all 6
def test_weight_gradient_against_numpy(patch_bytes, monkeypatch):
  """dW[i, j, c, d] = sum over b, h, w of xpad[b, h + i, w + j, c] g[b, h, w, d]."""
  monkeypatch.setattr(layers, 'PATCH_BYTES', patch_bytes)
  rng = np.random.default_rng(1)
  x, g = rng.normal(size=(2, 6, 4, 3)), rng.normal(size=(2, 6, 4, 2))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((3, 3, 3, 2))
  for i in range(3):
    for j in range(3):
      want[i, j] = np.einsum('bhwc,bhwd->cd', xp[:, i:i + 6, j:j + 4], g)
  got = layers.conv_weight_grad(jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32),
                                (3, 3, 3, 2), ((1, 1), (1, 1)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


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


def test_small_maps_keep_xlas_gradient(cpu_path, monkeypatch):
  """Below MIN_PIXELS the gradient is lax's own (no per-platform choice in the jaxpr)."""
  monkeypatch.setattr(layers, 'MIN_PIXELS', 32 * 32)
  w = jnp.ones((3, 3, 2, 2))

  def grad_jaxpr(side):
    x = jnp.ones((1, side, side, 2))
    f = lambda w: jnp.sum(layers.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC))
    return str(jax.make_jaxpr(jax.grad(f))(w))

  assert 'platform_index' not in grad_jaxpr(19)
  assert 'platform_index' in grad_jaxpr(38)


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
