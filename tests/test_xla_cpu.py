"""ssd_jax.xla_cpu: the CPU compiler options reach the compiled programs, keep
their results, and an option the installed XLA lacks is dropped, not fatal; the
initial train state compiles with the cheap passes."""
import logging
import types

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import sharding, train_step, xla_cpu
from ssd_jax.task import Task
from ssd_jax.testing import commands


VGG = types.SimpleNamespace(model=types.SimpleNamespace(backbone='vgg16'))


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_convolutions_compile_to_xlas_own_kernels_not_ynnpack():
  """With XLA's defaults a 64-channel 3x3 convolution becomes a YNNPACK fusion on
  this CPU; with the VGG backbone's options it stays XLA's convolution."""
  x, w = jnp.ones((1, 38, 38, 64)), jnp.ones((3, 3, 64, 64))
  ours = xla_cpu.jit(conv, VGG).lower(x, w).compile().as_text()
  assert ' convolution(' in ours and '__ynn' not in ours
  assert xla_cpu.compiler_options('vgg16') == xla_cpu.OPTIONS['vgg16']


def test_every_backbone_has_options_this_xla_accepts(load_config):
  for name in ('voc300', 'voc_ssdlite320'):
    backbone = load_config(name).model.backbone
    assert backbone in xla_cpu.OPTIONS
    assert xla_cpu.compiler_options(backbone) == xla_cpu.OPTIONS[backbone]


def test_the_options_keep_the_results():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 20, 20, 64)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 64, 32)) / 24, jnp.float32)
  want = np.einsum('bhwijc,ijcd->bhwd', np.lib.stride_tricks.sliding_window_view(
      np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), (1, 2))
      .transpose(0, 1, 2, 4, 5, 3), np.asarray(w, np.float64))
  np.testing.assert_allclose(xla_cpu.jit(conv, VGG)(x, w), want, rtol=1e-5, atol=1e-5)


def test_an_option_this_xla_lacks_is_dropped_with_a_warning(monkeypatch, caplog):
  monkeypatch.setattr(xla_cpu, 'OPTIONS', {'vgg16': {'xla_cpu_no_such_option': 'x'}})
  with caplog.at_level(logging.WARNING):
    assert xla_cpu.compiler_options('vgg16') is None
    assert xla_cpu.jit(jnp.negative, VGG)(jnp.ones(2)).tolist() == [-1.0, -1.0]
  assert 'xla_cpu_no_such_option' in caplog.text


def test_no_options_means_xlas_defaults(monkeypatch):
  monkeypatch.setattr(xla_cpu, 'OPTIONS', {})
  assert xla_cpu.compiler_options('vgg16') is None


def test_a_function_with_options_also_runs_inside_another_trace():
  """JAX refuses compiler options on a jit called inside jit, vmap, grad or
  eval_shape; xla_cpu.jit's functions run there without them, same values."""
  f = xla_cpu.jit(lambda x: jnp.sin(x) * 2.0, VGG)
  x = jnp.linspace(0.0, 1.0, 5)
  want = np.sin(np.linspace(0.0, 1.0, 5)) * 2.0
  np.testing.assert_allclose(f(x), want, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda x: f(x) + 1.0)(x), want + 1.0, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(f)(x), want, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda x: f(x).sum())(x), 2.0 * np.cos(np.linspace(
      0.0, 1.0, 5)), rtol=1e-6)
  assert jax.eval_shape(f, jax.ShapeDtypeStruct((5,), jnp.float32)).shape == (5,)
  assert ' sine(' in f.lower(x).compile().as_text()  # the top-level function's attributes


def test_the_initial_state_compiles_with_the_cheap_passes(load_config, monkeypatch):
  """create_state jits its one run with RUN_ONCE on CPU, and abstract_state (which
  traces create_state inside eval_shape, where JAX refuses options) still works."""
  seen = []

  class Recorded(xla_cpu.Jitted):
    def __init__(self, fun, options, **kwargs):
      seen.append(options)
      super().__init__(fun, options, **kwargs)

  monkeypatch.setattr(xla_cpu, 'Jitted', Recorded)
  config = load_config('shapes')
  config.model.width = 0.125
  task, mesh = Task.of(config), sharding.make_mesh(jax.devices()[:1])
  state = train_step.create_state(task, mesh, jax.random.key(0))
  assert seen == [xla_cpu.RUN_ONCE] == [xla_cpu.run_once_options()]
  # The tests' own cheap passes (written out, as they are set before JAX starts) are these.
  assert {f'--{k}={str(v).lower()}' for k, v in xla_cpu.RUN_ONCE.items()} <= set(
      commands.QUICK_COMPILE.split())
  abstract = train_step.abstract_state(task, mesh)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
      lambda a: (a.shape, a.dtype), state)
