"""Optimiser, schedule and the data-parallel train step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import optim, sharding, train_step
from ssd_jax.testing import synthetic
from ssd_jax.testing.synthetic import synthetic_batch
from ssd_jax.task import Task


def test_schedule_by_hand(load_config):
  cfg = load_config('voc300').optim
  schedule = optim.learning_rate_schedule(cfg)
  for step, want in [(0, 1e-3), (79_999, 1e-3), (80_000, 1e-4), (99_999, 1e-4),
                     (100_000, 1e-5), (119_999, 1e-5)]:  # no warmup, as released
    assert float(schedule(step)) == pytest.approx(want, rel=1e-5), step
  cfg.warmup_steps = 500  # the option reproductions add
  for step, want in [(0, 1e-3 / 500), (249, 0.5e-3), (499, 1e-3), (80_000, 1e-4)]:
    assert float(optim.learning_rate_schedule(cfg)(step)) == pytest.approx(want, rel=1e-5)


PARAMS = {'conv': {'kernel': jnp.array([1.0, -2.0]), 'bias': jnp.array([3.0])},
          'conv4_3_norm': {'scale': jnp.array([20.0, 10.0])}}


def test_zero_gradient_decays_kernels_and_the_l2norm_scale_but_not_biases(load_config):
  cfg = load_config('voc300').optim
  assert optim.decay_mask(PARAMS) == {'conv': {'kernel': True, 'bias': False},
                                      'conv4_3_norm': {'scale': True}}
  tx = optim.create_optimizer(cfg)
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates['conv4_3_norm']['scale'], -1e-3 * 5e-4 * np.array([20, 10]),
                             rtol=1e-6)
  np.testing.assert_allclose(updates['conv']['kernel'], -1e-3 * 5e-4 * np.array([1, -2]),
                             rtol=1e-6)
  np.testing.assert_array_equal(updates['conv']['bias'], [0.0])


def test_a_bias_moves_twice_as_far_as_a_kernel(load_config):
  """Plain SGD (no decay, no momentum): equal gradients, biases at lr_mult 2."""
  cfg = load_config('voc300').optim
  cfg.weight_decay, cfg.momentum = 0.0, 0.0
  tx = optim.create_optimizer(cfg)
  params = {'conv': {'kernel': jnp.array([0.7]), 'bias': jnp.array([0.7])}}
  grads = {'conv': {'kernel': jnp.array([0.5]), 'bias': jnp.array([0.5])}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['conv']['kernel'], [-1e-3 * 0.5], rtol=1e-6)
  np.testing.assert_allclose(updates['conv']['bias'], [-2e-3 * 0.5], rtol=1e-6)


def test_momentum_accumulates_learning_rate_scaled_steps_as_caffe(load_config):
  """v <- m v + lr g: across a learning-rate drop the old velocity keeps its rate
  (optax.sgd would rescale it: -(lr_1)(g + m g))."""
  cfg = load_config('voc300').optim
  cfg.weight_decay, cfg.boundaries = 0.0, (1,)
  tx = optim.create_optimizer(cfg)
  params = {'conv': {'kernel': jnp.array([0.7])}}
  g = {'conv': {'kernel': jnp.array([0.5])}}
  state = tx.init(params)
  _, state = tx.update(g, state, params)
  updates, _ = tx.update(g, state, params)
  np.testing.assert_allclose(updates['conv']['kernel'], [-(0.9 * 1e-3 * 0.5 + 1e-4 * 0.5)],
                             rtol=1e-6)


def test_adam_first_step_by_hand_and_unknown_optimizer(load_config):
  cfg = load_config('shapes').optim
  params = {'conv': {'kernel': jnp.array([1.0, -2.0]), 'bias': jnp.array([3.0])}}
  tx = optim.create_optimizer(cfg)
  grads = {'conv': {'kernel': jnp.array([0.5, 0.5]), 'bias': jnp.array([-0.5])}}
  updates, _ = tx.update(grads, tx.init(params), params)
  lr0 = cfg.learning_rate / cfg.warmup_steps
  # Adam's first step is -lr * sign(g) (bias-corrected moments, eps aside).
  np.testing.assert_allclose(updates['conv']['kernel'], [-lr0, -lr0], rtol=1e-4)
  np.testing.assert_allclose(updates['conv']['bias'], [lr0], rtol=1e-4)
  cfg.name = 'adamw'
  with pytest.raises(ValueError, match='optim.name'):
    optim.create_optimizer(cfg)


def tiny_config(load_config):
  return synthetic.tiny_config(load_config('voc300'))


def one_step(config, devices, batch):
  mesh, task = sharding.make_mesh(devices), Task.of(config)
  state = train_step.create_state(task, mesh, jax.random.key(0))
  anchors = jnp.asarray(task.default_boxes)
  step = train_step.jit_train_step(task, mesh)
  state, metrics = step(state, sharding.global_batch(batch, mesh), anchors)
  return jax.device_get(state.params), jax.device_get(metrics)


def test_eight_devices_give_the_one_device_step(load_config):
  assert jax.device_count() == 8, 'conftest sets 8 simulated CPU devices'
  config = tiny_config(load_config)
  config.optim.learning_rate = 0.05  # a visible step
  batch = synthetic_batch(np.random.default_rng(0), 8)
  params_1, metrics_1 = one_step(config, jax.devices()[:1], batch)
  params_8, metrics_8 = one_step(config, jax.devices(), batch)
  np.testing.assert_allclose(metrics_8['loss'], metrics_1['loss'], rtol=1e-5)
  start = jax.device_get(train_step.create_state(
      Task.of(config), sharding.make_mesh(jax.devices()[:1]), jax.random.key(0)).params)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), params_1, start)
  assert max(jax.tree.leaves(moved)) > 1e-4  # the step did change the parameters
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_8, params_1)


def test_batch_that_does_not_divide_over_devices(load_config):
  with pytest.raises(ValueError, match='batch_size=12 does not divide over 8 devices'):
    sharding.check_mesh_batch(12, sharding.make_mesh())


def test_tiny_model_drives_its_loss_down(load_config, full_optimisation):
  config = tiny_config(load_config)
  config.optim.learning_rate = 0.01
  config.optim.grad_clip_norm = 10.0
  mesh, task = sharding.make_mesh(jax.devices()[:1]), Task.of(config)  # 8 devices: the test above
  state = train_step.create_state(task, mesh, jax.random.key(0))
  anchors = jnp.asarray(task.default_boxes)
  step = train_step.jit_train_step(task, mesh)
  batch = sharding.global_batch(synthetic_batch(np.random.default_rng(1), 8), mesh)
  history = []
  for _ in range(150):
    state, metrics = step(state, batch, anchors)
    history.append(float(metrics['loss']))
  assert np.all(np.isfinite(history))
  assert np.mean(history[-5:]) < np.mean(history[:5]) / 4, history[::10]


def _loss_curve(config, steps: int) -> np.ndarray:
  """Losses of `steps` train steps on a fixed stream of synthetic batches, one device."""
  mesh, task = sharding.make_mesh(jax.devices()[:1]), Task.of(config)
  state = train_step.create_state(task, mesh, jax.random.key(0))
  anchors = jnp.asarray(task.default_boxes)
  step, losses, rng = train_step.jit_train_step(task, mesh), [], np.random.default_rng(1)
  for _ in range(steps):
    batch = sharding.global_batch(synthetic_batch(rng, 16), mesh)
    state, metrics = step(state, batch, anchors)
    losses.append(float(metrics['loss']))
  return np.asarray(losses)


def test_bfloat16_training_follows_float32(load_config, full_optimisation):
  """Same init, same batches: bfloat16 compute (float32 parameters, loss and
  optimiser) learns as float32 does: 10-step mean losses within 15% (single
  steps drift apart as rounding changes the path, as two float32 seeds do)."""
  config = tiny_config(load_config)
  config.optim.name, config.optim.learning_rate, config.optim.warmup_steps = 'adam', 1e-3, 0
  f32 = _loss_curve(config, 40)
  config.model.dtype = 'bfloat16'
  bf16 = _loss_curve(config, 40)
  print('float32 ', np.round(f32[::5], 2), '\nbfloat16', np.round(bf16[::5], 2))
  assert np.all(np.isfinite(bf16))
  assert np.mean(f32[-5:]) < 0.6 * np.mean(f32[:5])  # it learns, so the curves say something
  windows = lambda x: x.reshape(4, 10).mean(1)  # noqa: E731  (10-step means)
  print('10-step means', np.round(windows(f32), 2), np.round(windows(bf16), 2))
  np.testing.assert_allclose(windows(bf16), windows(f32), rtol=0.15)
