"""Model state beyond parameters: BatchNorm statistics and the weights' moving
average through the train step, checkpoints and inference; parameter roles;
input std; parts from a registry; configs of older versions."""
import json

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.training import train_state

from ssd_jax import builders, checkpoints, config_lib, models, optim, sharding
from ssd_jax import workdirs
from ssd_jax.models import ssd
from ssd_jax import train_step
from ssd_jax.testing import runs, synthetic
from ssd_jax.testing.synthetic import synthetic_batch
from ssd_jax.task import Task

MOMENTUM = 0.9


class TinyBatchNormBackbone(nn.Module):
  """BatchNorm on the input itself (its statistics are then plain NumPy), then two
  convolutions: maps 'a' (stride 4) and 'b' (stride 8)."""
  channels: int = 8

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM, name='bn')(images)
    a = nn.relu(nn.Conv(self.channels, (3, 3), strides=(4, 4), name='a')(x))
    b = nn.relu(nn.Conv(self.channels, (3, 3), strides=(2, 2), name='b')(a))
    return [a, b]


TINY = ssd.BackbonePart(settings=dict(channels=8), layers=lambda s: ('a', 'b'),
                           build=lambda m, s, dtype, param_dtype: TinyBatchNormBackbone(
                               s.channels))


@pytest.fixture
def tiny_bn(monkeypatch):
  """A config of a BatchNorm backbone registered for the test (one part, no
  other file touched), 96 px inputs, two classes."""
  monkeypatch.setitem(models.families(), 'tiny_bn', ssd.Family('tiny_bn', TINY, {}))
  c = config_lib.base_config('tiny_bn')
  c.model.image_size, c.model.sources = 96, ('a', 'b')
  c.anchors.aspect_ratios = ((2,), (2,))
  c.data.class_names, c.data.max_boxes = ('red', 'green'), 3
  c.data.mean_rgb, c.data.std_rgb = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
  c.train.batch_size, c.train.num_steps = 8, 10
  c.optim.learning_rate, c.optim.warmup_steps = 0.05, 1
  return c


def first_step(config, devices):
  mesh, task = sharding.make_mesh(devices), Task.of(config)
  state = train_step.create_state(task, mesh, jax.random.key(0))
  anchors = jnp.asarray(task.default_boxes)
  batch = synthetic_batch(np.random.default_rng(0), 8)
  new, _ = train_step.jit_train_step(task, mesh)(
      jax.device_get(state), sharding.global_batch(batch, mesh), anchors)
  return jax.device_get(state), jax.device_get(new), batch


def test_batch_norm_statistics_are_of_the_global_batch(tiny_bn):
  """Eight devices, one image each: the running mean and variance move towards the
  whole batch's, as one device's would (per-device statistics would differ)."""
  config = config_lib.validate(tiny_bn)
  _, one, batch = first_step(config, jax.devices()[:1])
  _, eight, _ = first_step(config, jax.devices())
  x = (batch['image'].astype(np.float64) - config.data.mean_rgb) / config.data.std_rgb
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # Flax: the biased variance
  for state in (one, eight):
    stats = state.batch_stats['backbone']['bn']
    np.testing.assert_allclose(stats['mean'], (1 - MOMENTUM) * mean, rtol=1e-4)
    np.testing.assert_allclose(stats['var'], MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               eight.params, one.params)


def test_the_moving_average_of_the_weights_by_hand(tiny_bn):
  """Step 0: decay min(0.99, 1/10) = 0.1, so ema = 0.1 p0 + 0.9 p1."""
  tiny_bn.optim.ema_decay = 0.99
  before, after, _ = first_step(config_lib.validate(tiny_bn), jax.devices()[:1])
  jax.tree.map(lambda e, p: np.testing.assert_array_equal(e, p), before.ema_params,
               before.params)
  jax.tree.map(lambda e, p0, p1: np.testing.assert_allclose(e, 0.1 * p0 + 0.9 * p1, rtol=1e-5,
                                                            atol=1e-7),
               after.ema_params, before.params, after.params)
  assert not np.allclose(after.params['backbone']['a']['kernel'],
                         before.params['backbone']['a']['kernel'])
  used = builders.inference_variables(after)
  assert used['params'] is after.ema_params and used['batch_stats'] is after.batch_stats
  assert builders.inference_variables(after.params) == {'params': after.params}


def test_checkpoints_save_and_restore_the_state_beyond_parameters(tiny_bn, tmp_path):
  tiny_bn.optim.ema_decay = 0.99
  config = config_lib.validate(tiny_bn)
  _, state, _ = first_step(config, jax.devices()[:1])
  mngr = checkpoints.manager(str(tmp_path), config)
  checkpoints.save(mngr, 1, state, force=True)
  mngr.wait_until_finished()
  mngr.close()
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), b)  # noqa
  variables, step = checkpoints.restore_variables(Task.of(config), str(tmp_path))
  assert step == 1 and set(variables) == {'params', 'batch_stats'}
  same(variables['params'], state.ema_params)
  same(variables['batch_stats'], state.batch_stats)
  params, _ = runs.restore_params(Task.of(config), str(tmp_path))
  same(params, state.params)
  # Partial restore (fine-tuning on other classes): all but the class head.
  other = config_lib.validate(_with_classes(tiny_bn, ('a', 'b', 'c')))
  fresh = builders.init_variables(other, jax.random.key(1))
  loaded, report = checkpoints.load_matching_variables(str(tmp_path), fresh)
  assert 'batch_stats/backbone/bn/mean' in report['restored']
  assert 'params/head/a_conf/kernel' in report['kept']
  same(loaded['batch_stats'], state.batch_stats)
  same(loaded['params']['backbone'], state.ema_params['backbone'])


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_a_resumed_run_traces_the_fresh_runs_train_step(tiny_bn, optimizer, tmp_path):
  """The state a resumed run restores lowers the train step to the same program
  as a fresh run's state (a weakly typed step counter made another), so JAX's
  compilation cache serves a run restarted after preemption the step it compiled."""
  tiny_bn.optim.name, tiny_bn.optim.boundaries = optimizer, (5,)
  config = config_lib.validate(tiny_bn)
  task, mesh = Task.of(config), sharding.make_mesh(jax.devices()[:1])
  fresh = train_step.create_state(task, mesh, jax.random.key(0))
  mngr = checkpoints.manager(str(tmp_path), config)
  checkpoints.save(mngr, 1, fresh, force=True)
  mngr.wait_until_finished()
  step, restored = checkpoints.restore_newest_readable(
      mngr, train_step.abstract_state(task, mesh), str(tmp_path))
  mngr.close()
  batch = sharding.global_batch(synthetic_batch(np.random.default_rng(0), 8), mesh)
  lower = lambda state: train_step.jit_train_step(task, mesh).lower(  # noqa: E731
      state, batch, jnp.asarray(task.default_boxes)).as_text()
  assert step == 1 and lower(restored) == lower(fresh)


def _with_classes(config, names):
  c = config_lib.base_config('tiny_bn')
  c.update(config.to_dict())
  c.data.class_names, c.model.num_classes = names, None
  return c


def test_an_old_train_state_still_evaluates(load_config, tmp_path):
  """A checkpoint of flax's plain TrainState (no batch_stats, no ema_params), as
  older versions wrote them, restores for inference."""
  from ssd_jax.testing import synthetic
  config = config_lib.validate(synthetic.tiny_config(load_config('voc300')))
  params = synthetic.init_params(config, jax.random.key(3))
  old = train_state.TrainState.create(apply_fn=None, params=params,
                                      tx=optim.create_optimizer(config.optim))
  mngr = checkpoints.manager(str(tmp_path), config)
  checkpoints.save(mngr, 7, old, force=True)
  mngr.wait_until_finished()
  mngr.close()
  variables, step = checkpoints.restore_variables(Task.of(config), str(tmp_path))
  assert step == 7 and set(variables) == {'params'}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables['params']), params)


def test_roles_come_from_the_owning_module(tiny_bn):
  roles = flax.traverse_util.flatten_dict(builders.trace_model(config_lib.validate(tiny_bn)).roles,
                                          sep='/')
  assert roles['backbone/bn/scale'] == roles['backbone/bn/bias'] == 'norm'
  assert roles['backbone/a/kernel'] == roles['head/a_loc/kernel'] == 'weight'
  assert roles['backbone/a/bias'] == roles['head/b_conf/bias'] == 'bias'
  vgg = flax.traverse_util.flatten_dict(builders.trace_model(
      config_lib.validate(config_lib.load('configs/voc300.py'))).roles, sep='/')
  assert vgg['backbone/conv4_3_norm/scale'] == 'weight'  # the recipe decays it
  assert {vgg[k] for k in vgg if k.endswith('kernel')} == {'weight'}


def test_a_parameter_without_a_role_is_refused(tiny_bn, monkeypatch):
  class Odd(nn.Module):
    @nn.compact
    def __call__(self, images, train=False):
      alpha = self.param('alpha', nn.initializers.ones, (3,))
      return TinyBatchNormBackbone()(images * alpha, train)
  odd = ssd.BackbonePart(settings=TINY.settings, layers=TINY.layers, build=lambda *a: Odd())
  monkeypatch.setitem(models.families(), 'tiny_bn', ssd.Family('tiny_bn', odd, {}))
  with pytest.raises(ValueError, match='parameter backbone/alpha has no role'):
    builders.trace_model(config_lib.validate(tiny_bn)).roles


@pytest.mark.parametrize('decayed,bn_moves', [(('weight',), False),
                                              (('weight', 'bias', 'norm'), True)])
def test_weight_decay_by_role(tiny_bn, decayed, bn_moves):
  """A zero gradient: decay moves exactly the decayed roles, by lr * wd * w."""
  tiny_bn.optim.weight_decay_roles, tiny_bn.optim.momentum = decayed, 0.0
  config = config_lib.validate(tiny_bn)
  params = synthetic.init_params(config, jax.random.key(0))
  params['backbone']['bn']['scale'] = jnp.full((3,), 2.0)
  tx = optim.create_optimizer(config.optim, builders.trace_model(config).roles)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  lr = float(optim.learning_rate_schedule(config.optim)(0))
  want = -lr * config.optim.weight_decay * 2.0 if bn_moves else 0.0
  np.testing.assert_allclose(updates['backbone']['bn']['scale'], want, rtol=1e-6)
  np.testing.assert_allclose(updates['backbone']['a']['kernel'],
                             -lr * config.optim.weight_decay * params['backbone']['a']['kernel'],
                             rtol=1e-5)


def test_input_normalisation_with_std(tiny_bn):
  pixels = np.array([[[[0, 110, 255]]]], np.uint8)
  got = builders.normalise_images(pixels, tiny_bn)
  np.testing.assert_allclose(got, [[[[-2.0, 0.0, 155 / 40]]]], rtol=1e-6)
  tiny_bn.data.std_rgb = (1.0, 0.0, 1.0)
  with pytest.raises(ValueError, match='data.std_rgb'):
    config_lib.validate(tiny_bn)


def test_cosine_schedule_with_warmup_by_hand(load_config):
  cfg = load_config('voc300').optim
  cfg.schedule, cfg.learning_rate, cfg.warmup_steps, cfg.warmup_start_factor = (
      'cosine', 0.15, 100, 0.001)
  schedule = optim.learning_rate_schedule(cfg, 1000)
  for step in (0, 50, 100, 500, 999):
    warm = 0.001 + (1 - 0.001) * min(step, 100) / 100
    want = 0.15 * warm * 0.5 * (1 + np.cos(np.pi * step / 1000))
    assert float(schedule(step)) == pytest.approx(want, rel=1e-4, abs=1e-8), step  # float32
  with pytest.raises(ValueError, match='train.num_steps'):
    optim.learning_rate_schedule(cfg)


def test_pytorch_sgd_scales_the_velocity_by_the_current_rate(load_config):
  """sgd_torch: v <- m v + g, update -lr_t v (PyTorch's SGD), against Caffe's sgd."""
  cfg = load_config('voc300').optim
  cfg.name, cfg.weight_decay, cfg.boundaries, cfg.bias_lr_mult = 'sgd_torch', 0.0, (1,), 1.0
  tx = optim.create_optimizer(cfg)
  params, g = {'conv': {'kernel': jnp.array([0.7])}}, {'conv': {'kernel': jnp.array([0.5])}}
  state = tx.init(params)
  _, state = tx.update(g, state, params)
  updates, _ = tx.update(g, state, params)
  np.testing.assert_allclose(updates['conv']['kernel'], [-1e-4 * (0.9 * 0.5 + 0.5)], rtol=1e-6)


def test_a_config_json_of_an_older_version_reads(load_config, tmp_path):
  """VGG16's fields were under `model` before backbones had a section, and
  backbone.batch_norm (newer) was not written at all: it reads as its default."""
  config = config_lib.validate(load_config('voc512'))
  values = json.loads(config.to_json())
  backbone = values.pop('backbone')
  values['model'].update({k: backbone[k] for k in workdirs.MOVED_TO_BACKBONE})
  assert set(backbone) - set(workdirs.MOVED_TO_BACKBONE) == {'batch_norm'}
  del values['model']['backbone'], values['model']['head']
  (tmp_path / 'config.json').write_text(json.dumps(values))
  read = workdirs.find_config(str(tmp_path))
  assert read.model.backbone == 'vgg16' and read.backbone.extras == 'ssd512'
  assert read.backbone.to_dict() == config.backbone.to_dict()
  assert len(builders.build_default_boxes(config_lib.validate(read))) == 24564


def test_backbone_settings_must_match_the_backbone(tiny_bn, load_config):
  config = load_config('voc300')
  config.model.backbone = 'tiny_bn'
  with pytest.raises(ValueError, match="model.backbone='tiny_bn' takes \\['channels'\\]"):
    config_lib.validate(config)
  tiny_bn.model.sources = ('b', 'a')
  with pytest.raises(ValueError, match='network order'):
    config_lib.validate(tiny_bn)
