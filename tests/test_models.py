"""The Flax modules: parameter count, shapes, L2Norm, pooling, dtypes, ablations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import builders, config_lib
from ssd_jax.models import vgg16
from ssd_jax.task import Task
from ssd_jax.testing import synthetic


def abstract_forward(config, batch=2):
  model = Task.of(config).model
  size = config.model.image_size
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init_with_output, jax.random.key(0), images)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_ssd300_parameter_count_and_shapes(load_config):
  (loc, logits), variables = abstract_forward(load_config('voc300'))
  assert count(variables) == 26_285_486
  assert count(variables['params']['backbone']['conv4_3_norm']) == 512
  assert loc.shape == (2, 8732, 4) and logits.shape == (2, 8732, 21)
  assert loc.dtype == logits.dtype == jnp.float32


def test_vgg_part_matches_hand_count(load_config):
  """VGG16 conv1_1..conv5_3 is 14,714,688 parameters; conv6 4,719,616; conv7 1,049,600."""
  (_, _), variables = abstract_forward(load_config('voc300'))
  p = variables['params']['backbone']
  vgg_names = vgg16.layer_order('ssd300')[:13]
  assert vgg_names[0] == 'conv1_1' and vgg_names[-1] == 'conv5_3'
  vgg = sum(count(p[n]) for n in vgg_names)
  assert vgg == 14_714_688
  assert count(p['conv6']) == 3 * 3 * 512 * 1024 + 1024
  assert count(p['conv7']) == 1024 * 1024 + 1024


@pytest.mark.parametrize('name,classes', [('voc512', 21), ('coco512', 81), ('coco300', 81)])
def test_other_configs_shapes(load_config, name, classes):
  c = load_config(name)
  (loc, logits), _ = abstract_forward(c, batch=1)
  assert loc.shape[1] == logits.shape[1] == len(builders.build_default_boxes(c))
  assert logits.shape[2] == classes


def test_ceil_pooling_rounds_up():
  x = jnp.arange(75 * 75, dtype=jnp.float32).reshape(1, 75, 75, 1)
  y = vgg16.ceil_max_pool(x)
  assert y.shape == (1, 38, 38, 1)
  np.testing.assert_array_equal(y[0, -1, -1, 0], x[0, -1, -1, 0])  # lone corner pixel


def test_l2norm_starts_at_scale_20():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 16))
  layer = vgg16.L2Norm()
  y, variables = layer.init_with_output(jax.random.key(1), x)
  np.testing.assert_allclose(variables['params']['scale'], np.full(16, 20.0))
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), 20.0, rtol=1e-5)


def tiny(config, width=0.125, size=300):
  config.model.width = width
  config.model.image_size = size
  return config


def test_tiny_forward_matches_default_boxes(load_config):
  c = tiny(load_config('voc300'))
  model = Task.of(c).model
  images = jax.random.normal(jax.random.key(0), (2, 300, 300, 3))
  variables = model.init(jax.random.key(1), images)
  loc, logits = jax.jit(model.apply)(variables, images)
  assert loc.shape == (2, 8732, 4) and logits.shape == (2, 8732, 21)
  assert np.all(np.isfinite(loc)) and np.all(np.isfinite(logits))


def test_bfloat16_compute_close_to_float32(load_config):
  c = tiny(load_config('voc300'), width=0.25)
  images = jax.random.normal(jax.random.key(0), (2, 300, 300, 3)) * 50
  f32 = Task.of(c).model
  variables = jax.jit(f32.init)(jax.random.key(1), images)
  c.model.dtype = 'bfloat16'
  bf16 = Task.of(c).model
  # Same parameter tree, still float32 storage.
  bf_vars = jax.eval_shape(bf16.init, jax.random.key(1), images)
  assert jax.tree.structure(bf_vars) == jax.tree.structure(variables)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf_vars))
  want = jax.jit(f32.apply)(variables, images)
  got = jax.jit(bf16.apply)(variables, images)
  for g, w in zip(got, want):
    assert g.dtype == jnp.float32
    rel = np.linalg.norm(g - w) / np.linalg.norm(w)
    assert rel < 0.05, rel


def test_table3_fewer_sources_and_table2_fewer_ratios(load_config):
  """The paper's ablations as configs: head outputs always equal the boxes."""
  c = load_config('voc300')
  c.model.sources = ('conv4_3', 'conv7', 'conv8_2', 'conv9_2')
  c.anchors.min_sizes = (30, 60, 111, 162)
  c.anchors.max_sizes = (60, 111, 162, 213)
  c.anchors.steps = (8, 16, 32, 64)
  c.anchors.aspect_ratios = ((), (2,), (2,), (2,))
  (loc, _), variables = abstract_forward(c, batch=1)
  assert 'conv10_1' not in variables['params']['backbone']
  expected = 38 * 38 * 2 + (19 * 19 + 10 * 10 + 5 * 5) * 4
  assert loc.shape[1] == len(builders.build_default_boxes(c)) == expected


def test_without_atrous_ablation(load_config):
  c = load_config('voc300')
  c.backbone.atrous = False
  c.model.sources = ('conv4_3', 'conv5_3', 'conv7', 'conv8_2', 'conv9_2', 'conv10_2')
  c.anchors.steps = None
  assert builders.source_feature_sizes(c) == (38, 19, 10, 5, 3, 1)
  c.model.sources = ('conv4_3', 'conv7', 'conv8_2', 'conv9_2', 'conv10_2', 'conv11_2')
  with pytest.raises(ValueError, match='conv11_2 needs a feature map'):
    builders.source_feature_sizes(c)


def test_config_errors_name_the_field(load_config):
  c = load_config('voc300')
  with pytest.raises(AttributeError, match='min_size'):
    c.anchors.min_size = (1, 2)
  c.anchors.steps = (8, 16)
  with pytest.raises(ValueError, match='anchors.steps has 2 entries'):
    config_lib.validate(c)
  c = load_config('voc300')
  c.model.sources = ('conv7', 'conv4_3', 'conv8_2', 'conv9_2', 'conv10_2', 'conv11_2')
  with pytest.raises(ValueError, match='network order'):
    builders.source_feature_sizes(c)
  c = load_config('voc300')
  c.model.dtype = 'float33'
  with pytest.raises(ValueError, match='model.dtype'):
    Task.of(c).model


def test_new_layers_start_as_caffe_xavier(load_config):
  """Uniform in +-sqrt(3 / fan_in): variance 1 / fan_in within sampling error; biases 0."""
  params = jax.jit(lambda k: synthetic.init_params(
      config_lib.validate(load_config('voc300')), k))(jax.random.key(3))
  for layer, fan_in in (('conv8_2', 3 * 3 * 256), ('conv6', 3 * 3 * 512),
                        ('conv10_1', 256)):
    kernel = np.asarray(params['backbone'][layer]['kernel'], np.float64)
    n = kernel.size  # a uniform's sample variance has relative std sqrt(0.8 / n)
    assert abs(kernel.var() * fan_in - 1) < 5 * np.sqrt(0.8 / n), layer
    assert np.abs(kernel).max() <= np.sqrt(3 / fan_in) + 1e-7
    np.testing.assert_array_equal(params['backbone'][layer]['bias'], 0.0)
  head = np.asarray(params['head']['conv7_conf']['kernel'], np.float64)
  assert abs(head.var() * 3 * 3 * 1024 - 1) < 5 * np.sqrt(0.8 / head.size)


def test_vgg_batch_norm_by_hand(load_config):
  """backbone.batch_norm: each backbone conv loses its bias and gains BatchNorm
  '<name>_bn' before its ReLU (head convs unchanged); in training it normalises
  with the batch's mean and biased variance, in evaluation with its running ones."""
  plain = config_lib.validate(load_config('shapes'))
  c = load_config('shapes')
  c.backbone.batch_norm = True
  c = config_lib.validate(c)
  (_, _), before = abstract_forward(plain)
  (_, _), after = abstract_forward(c)
  p, stats = after['params']['backbone'], after['batch_stats']['backbone']
  convs = [n for n in before['params']['backbone'] if n != 'conv4_3_norm']
  assert sorted(stats) == sorted(f'{n}_bn' for n in convs)
  for n in convs:
    channels = before['params']['backbone'][n]['bias'].shape[0]
    assert set(p[n]) == {'kernel'} and set(p[f'{n}_bn']) == {'scale', 'bias'}
    assert stats[f'{n}_bn']['mean'].shape == (channels,)
  assert 'bias' in after['params']['head']['conv7_conf']
  # Each conv: minus its C biases, plus BatchNorm's C scales and C offsets.
  extra = sum(before['params']['backbone'][n]['bias'].shape[0] for n in convs)
  assert count(after['params']) == count(before['params']) + extra

  model = Task.of(c).model.backbone
  images = jax.random.normal(jax.random.key(0), (4, 96, 96, 3)) * 3.0 + 1.0
  variables = model.init(jax.random.key(1), images)
  for train in (True, False):
    _, inter = model.apply(variables, images, train, capture_intermediates=True,
                           mutable=['intermediates', 'batch_stats'])
    conv = np.asarray(inter['intermediates']['conv1_1']['__call__'][0], np.float64)
    normed = np.asarray(inter['intermediates']['conv1_1_bn']['__call__'][0])
    mean, var = (conv.mean((0, 1, 2)), conv.var((0, 1, 2))) if train else (0.0, 1.0)
    np.testing.assert_allclose(normed, (conv - mean) / np.sqrt(var + 1e-5), rtol=1e-4,
                               atol=1e-4)
