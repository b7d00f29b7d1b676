"""ssd_jax.models.mobilenet_v3 against torchvision's ssdlite320_mobilenet_v3_large and
mobilenet_v3_large, randomly initialised (nothing downloaded)."""
import copy
import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch', reason='torch is not installed; pip install -e ".[test]" '
                            'installs it for the converter tests')
torchvision = pytest.importorskip('torchvision', reason='torchvision is not installed; pip '
                                  'install -e ".[test]" installs it')
import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torchvision.models.detection import ssdlite320_mobilenet_v3_large  # noqa: E402

from ssd_jax import config_lib, convert, detector, workflows  # noqa: E402
from ssd_jax.models import heads, mobilenet_v3  # noqa: E402
from ssd_jax.testing import detections  # noqa: E402
from ssd_jax.testing.torch_reference import (  # noqa: E402
    numpy_state_dict, randomise_batch_norms)

BATCH = 2
BOXES_PER_LOCATION = (6,) * 6  # torchvision's SSDLite320: two aspect ratios
FEATURE_SIZES = (20, 10, 5, 3, 2, 1)


def source_channels() -> tuple[int, ...]:
  """Channels of the six source maps, from the block table: (C4 expansion, last
  conv, the extra blocks')."""
  blocks = mobilenet_v3.block_configs(1.0, True)
  return (blocks[mobilenet_v3.C4_BLOCK - 1].expanded,
          mobilenet_v3.LAST_CONV_EXPANSION * blocks[-1].out, *mobilenet_v3.SSDLITE_EXTRA_CHANNELS)


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
  """torch's threads beside XLA's on a small CPU slowed torch's float64 pass 10x
  (up to minutes under load); one thread takes about a second."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def count(tree) -> int:
  """Total number of elements of a pytree of arrays."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


def max_error(ours, theirs):
  """Largest |ours - theirs| relative to theirs' largest magnitude."""
  theirs = np.asarray(theirs)
  return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).uniform(-1, 1, (BATCH, 320, 320, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def torch_ssdlite(images):
  torch.manual_seed(0)
  model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
  calibration = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, 320, 320))
                                 .astype(np.float32))
  return randomise_batch_norms(
      model, lambda x: model.head(list(model.backbone(x).values())), calibration, seed=2)


def ssdlite_forward(dtype):
  """A jitted (variables, images) -> (6 maps, (offsets, logits)) of our modules."""
  kw = dict(dtype=dtype, param_dtype=dtype)
  backbone = mobilenet_v3.MobileNetV3LargeFeatures(**kw)
  head = heads.SSDLiteHead(91, BOXES_PER_LOCATION, **kw)

  @jax.jit
  def forward(variables, images):
    maps = backbone.apply({k: v['backbone'] for k, v in variables.items()}, images)
    return maps, head.apply({k: v['head'] for k, v in variables.items()}, maps)

  return forward


# float64 on both sides shows the layers are the same (errors ~1e-13; the head's
# outputs are cast to float32). In float32 both sides round differently, and this
# random net amplifies that from extra_0 on (its depthwise BatchNorm multiplies by
# up to 74, running var 4e-4): torch float32 is itself up to 1.8e-4 (relative to
# the map's largest value) off its own float64 result there.
F32_MAPS_TOL = 1e-3


@pytest.mark.parametrize('dtype,maps_tol,head_tol', [('float64', 1e-10, 1e-6),
                                                     ('float32', F32_MAPS_TOL, 1e-4)])
def test_converted_ssdlite_gives_torchvisions_maps_and_head(torch_ssdlite, images, dtype,
                                                            maps_tol, head_tol):
  model = copy.deepcopy(torch_ssdlite).to(getattr(torch, dtype))
  x = images.astype(dtype)
  with torch.no_grad():
    features = list(model.backbone(torch.from_numpy(nchw(x))).values())
    expected = model.head(features)
  variables = mobilenet_v3.torchvision_ssdlite320_variables(numpy_state_dict(torch_ssdlite))
  with jax.enable_x64(dtype == 'float64'):
    variables = jax.tree.map(lambda a: a.astype(dtype), variables)
    maps, (locs, logits) = ssdlite_forward(jnp.dtype(dtype))(variables, x)
    assert maps[0].dtype == dtype
  assert len(maps) == len(features) == 6
  errors, abs_errors = [], []
  for ours, theirs in zip(maps, features, strict=True):
    assert nchw(ours).shape == tuple(theirs.shape)
    assert theirs.abs().max() > 0.1  # the BatchNorms keep the maps from vanishing
    errors.append(max_error(nchw(ours), theirs.numpy()))
    abs_errors.append(float(np.abs(nchw(ours) - theirs.numpy()).max()))
  head = [(np.asarray(locs), expected['bbox_regression'].numpy()),
          (np.asarray(logits), expected['cls_logits'].numpy())]
  head_errors = [max_error(ours, theirs) for ours, theirs in head]
  abs_errors += [float(np.abs(ours - theirs).max()) for ours, theirs in head]
  print(f'{dtype}: relative max errors, 6 maps:', ['%.1e' % e for e in errors],
        'offsets, logits:', ['%.1e' % e for e in head_errors],
        '; absolute:', ['%.1e' % e for e in abs_errors])
  assert locs.shape == (BATCH, 3234, 4) and logits.shape == (BATCH, 3234, 91)
  assert max(errors) < maps_tol and max(head_errors) < head_tol


def test_train_mode_updates_batch_stats_like_torch(torch_ssdlite, images):
  """Train mode normalises with the batch's statistics on both sides and moves the
  running mean alike. The running variance differs: torch mixes in the unbiased
  batch variance (n / (n - 1) times the biased one), Flax the biased one; each is
  checked against its own formula. float64: a BatchNorm over a 1x1 map (n = 2)
  amplifies float32 rounding too much for a close comparison."""
  model = copy.deepcopy(torch_ssdlite.backbone).double().train()
  layers = {('features_0', 'bn'): model.features[0][0][1],
            ('features_13', 'expand', 'bn'): model.features[0][13][1],
            ('extra_3', 'project', 'bn'): model.extra[3][2][1]}  # a 1x1 map: n = BATCH
  inputs, old = {}, {}
  for key, bn in layers.items():
    old[key] = (bn.running_mean.numpy().copy(), bn.running_var.numpy().copy())
    bn.register_forward_hook(lambda m, args, out, key=key: inputs.__setitem__(
        key, args[0].numpy()))
  x = images.astype(np.float64)
  with torch.no_grad():
    features = list(model(torch.from_numpy(nchw(x))).values())

  variables = mobilenet_v3.torchvision_ssdlite320_variables(numpy_state_dict(torch_ssdlite))
  with jax.enable_x64(True):
    variables = {k: jax.tree.map(lambda a: a.astype(np.float64), v['backbone'])
                 for k, v in variables.items()}
    backbone = mobilenet_v3.MobileNetV3LargeFeatures(dtype=jnp.float64, param_dtype=jnp.float64)
    maps, updates = jax.jit(lambda v, x: backbone.apply(v, x, train=True,
                                                        mutable=['batch_stats']))(variables, x)
  for ours, theirs in zip(maps, features, strict=True):
    assert max_error(nchw(ours), theirs.numpy()) < 1e-10
  stats = flax.traverse_util.flatten_dict(updates['batch_stats'])
  torch_momentum = 1 - mobilenet_v3.BN_MOMENTUM  # 0.03
  for key, bn in layers.items():
    batch = inputs[key]
    mean = (1 - torch_momentum) * old[key][0] + torch_momentum * batch.mean((0, 2, 3))
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(stats[key + ('mean',)], mean, rtol=1e-10, atol=1e-14)
    for ddof, got in ((1, bn.running_var.numpy()), (0, stats[key + ('var',)])):
      var = (1 - torch_momentum) * old[key][1] + torch_momentum * batch.var((0, 2, 3), ddof=ddof)
      np.testing.assert_allclose(got, var, rtol=1e-9)
    if batch.size // batch.shape[1] == BATCH:  # unbiased = 2x biased: the rules differ
      assert not np.allclose(bn.running_var.numpy(), stats[key + ('var',)], rtol=1e-2)


def test_map_sizes_box_count_and_parameter_count(torch_ssdlite):
  backbone = mobilenet_v3.MobileNetV3LargeFeatures()
  head = heads.SSDLiteHead(91, BOXES_PER_LOCATION)
  images = jax.ShapeDtypeStruct((1, 320, 320, 3), jnp.float32)
  key = jax.random.key(0)
  bb_vars = jax.eval_shape(backbone.init, key, images)
  maps = jax.eval_shape(backbone.apply, bb_vars, images)
  assert [m.shape[1:] for m in maps] == [(s, s, c) for s, c in zip(
      FEATURE_SIZES, source_channels())]
  assert source_channels() == (672, 480, 512, 256, 256, 128)
  head_vars = jax.eval_shape(head.init, key, maps)
  locs, logits = jax.eval_shape(head.apply, head_vars, maps)
  assert locs.shape == (1, 3234, 4) and logits.shape == (1, 3234, 91)

  torch_params = sum(p.numel() for p in torch_ssdlite.parameters())
  torch_stats = sum(b.numel() for name, b in torch_ssdlite.named_buffers()
                    if not name.endswith('num_batches_tracked'))
  ours = count(bb_vars['params']) + count(head_vars['params'])
  assert ours == torch_params == 3_440_060  # torchvision's meta num_params
  assert count(bb_vars['batch_stats']) + count(head_vars['batch_stats']) \
      == torch_stats
  converted = mobilenet_v3.torchvision_ssdlite320_variables(numpy_state_dict(torch_ssdlite))
  for collection in ('params', 'batch_stats'):  # the same names and shapes
    expected = {'backbone': bb_vars[collection], 'head': head_vars[collection]}
    assert jax.tree.map(np.shape, converted[collection]) == jax.tree.map(np.shape, expected)


def test_initialisers_follow_torchvisions_normal_init():
  features = [jnp.ones((1, 4, 4, 96)), jnp.ones((1, 2, 2, 32))]
  variables = jax.jit(heads.SSDLiteHead(91, (6, 6)).init)(jax.random.key(0), features)
  params = variables['params']
  kernel = np.asarray(params['cls_0']['project']['kernel'])
  assert kernel.shape == (1, 1, 96, 546)
  assert abs(kernel.std() - 0.03) < 1e-3 and abs(kernel.mean()) < 1e-3
  assert not np.any(params['cls_0']['project']['bias'])
  np.testing.assert_array_equal(params['reg_1']['depthwise']['bn']['scale'], 1)
  np.testing.assert_array_equal(variables['batch_stats']['reg_1']['depthwise']['bn']['var'], 1)


def test_imagenet_mobilenet_features_convert():
  torch.manual_seed(3)
  model = torchvision.models.mobilenet_v3_large()
  rng = np.random.default_rng(4)
  calibration = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32))
  model = randomise_batch_norms(model, model, calibration, seed=5)
  sd = numpy_state_dict(model)
  with pytest.raises(ValueError, match='reduced_tail=False'):
    mobilenet_v3.mobilenet_v3_large_variables(sd, reduced_tail=True)
  converted = mobilenet_v3.mobilenet_v3_large_variables(sd)
  assert 'extra_0' not in converted['params']['backbone']

  backbone = mobilenet_v3.MobileNetV3LargeFeatures(reduced_tail=False)
  images = rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
  init = jax.eval_shape(backbone.init, jax.random.key(0), images)
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init)
  for collection in variables:  # the converted layers replace their zeros, shape for shape
    layers = converted[collection]['backbone']
    assert jax.tree.map(np.shape, layers) == jax.tree.map(
        np.shape, {k: variables[collection][k] for k in layers})
    variables[collection].update(layers)
  maps = jax.jit(backbone.apply)(variables, images)

  taps = []
  model.features[13].block[0].register_forward_hook(lambda m, a, out: taps.append(out))
  with torch.no_grad():
    end = model.features(torch.from_numpy(nchw(images)))
  for ours, theirs in ((maps[0], taps[0]), (maps[1], end)):
    assert nchw(ours).shape == tuple(theirs.shape)
    assert max_error(nchw(ours), theirs.numpy()) < 1e-4
  assert maps[1].shape[-1] == 960  # the full tail


def test_converter_errors_name_the_problem(torch_ssdlite, tmp_path):
  sd = numpy_state_dict(torch_ssdlite)
  with pytest.raises(ValueError, match='num_classes=21'):
    mobilenet_v3.torchvision_ssdlite320_variables(sd, num_classes=21)
  del sd['backbone.extra.1.1.0.weight']
  with pytest.raises(ValueError, match='backbone.extra.1.1.0.weight'):
    mobilenet_v3.torchvision_ssdlite320_variables(sd)
  torch.save({k: v for k, v in torch_ssdlite.state_dict().items()
              if k != 'backbone.extra.1.1.0.weight'}, tmp_path / 'cut.pth')
  with pytest.raises(ValueError, match=r'cut.pth has no tensor .backbone.extra.1.1.0.weight.'):
    convert.convert('torchvision_ssdlite320', str(tmp_path / 'cut.pth'), str(tmp_path / 'o'))
  reduced = torchvision.models.mobilenet_v3_large(reduced_tail=True)
  with pytest.raises(ValueError, match='reduced_tail=True'):
    mobilenet_v3.mobilenet_v3_large_variables(numpy_state_dict(reduced))


# --- the converter's command and predict's code -----------------------------------------


@pytest.fixture(scope='module')
def converted(torch_ssdlite, tmp_path_factory):
  """torch_ssdlite saved as a .pth and converted by `convert.convert` (what
  `python -m ssd_jax.convert --format=torchvision_ssdlite320` runs)."""
  folder = tmp_path_factory.mktemp('tv_ssdlite')
  torch.save(torch_ssdlite.state_dict(), folder / 'mobilenet_v3.pth')
  return convert.convert('torchvision_ssdlite320', str(folder / 'mobilenet_v3.pth'),
                         str(folder / 'out'))


def test_converted_ssdlite_gives_torchvisions_detections_through_predict(
    torch_ssdlite, converted, tmp_path, load_config):
  """Image files of two sizes through --mode=predict's code (its COCO results
  JSON, from the workdir the converter wrote) against torchvision's own
  detector on the same images: same boxes, scores and classes."""
  det = detector.Detector.from_checkpoint(converted)
  recipe = config_lib.validate(load_config('coco_ssdlite320'))
  assert det.config.to_json() == recipe.to_json()  # config.json
  assert set(det.variables) == {'params', 'batch_stats'}
  rng = np.random.default_rng(5)
  images = {'a.png': rng.integers(0, 256, (240, 320, 3), np.uint8),
            'b.png': rng.integers(0, 256, (360, 270, 3), np.uint8)}
  for name, image in images.items():
    Image.fromarray(image).save(tmp_path / name)
  out = workflows.predict_files(det, str(tmp_path / '*.png'), str(tmp_path / 'out'))
  found = json.loads(open(out['detections']).read())
  with torch.no_grad():
    expected = torch_ssdlite([torch.from_numpy(im).permute(2, 0, 1).float() / 255
                              for im in images.values()])
  for name, theirs in zip(images, expected, strict=True):
    ours = detections.from_coco_results(found, name)
    theirs = {'boxes': theirs['boxes'].numpy(), 'scores': theirs['scores'].numpy(),
              'classes': theirs['labels'].numpy()}
    assert len(ours['scores']) == len(theirs['scores']) == 300
    assert not detections.unmatched(ours, theirs, score_tol=1e-4, box_tol=0.1)
