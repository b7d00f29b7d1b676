"""ssd_jax.convert against PyTorch itself: randomly initialised torchvision models
(and a reduced-VGG ModuleList) saved to disk, converted, then run on both sides."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch', reason='torch is not installed; pip install -e ".[test]" '
                            'installs it for the converter tests')
torchvision = pytest.importorskip('torchvision', reason='torchvision is not installed; pip '
                                  'install -e ".[test]" installs it')
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

from ssd_jax import box_utils, builders, config_lib, convert, detector, labels  # noqa: E402
from ssd_jax import recipes, workflows  # noqa: E402
from ssd_jax.models import vgg16  # noqa: E402
from ssd_jax.testing import detections, runs  # noqa: E402
from ssd_jax.task import Task  # noqa: E402

def torch_base(convs, conv6, conv7, x):
  """The SSD base in PyTorch: VGG16 convs (13 Conv2d), ceil-mode 2x2 pools, pool5
  3x3/1, conv6 (dilation 6), conv7. x: NCHW -> (L2-normalised conv4_3 * 20, conv7)."""
  for i, conv in enumerate(convs):
    if i in (2, 4, 7, 10):
      x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = F.relu(conv(x))
    if i == 9:
      conv4_3 = F.normalize(x) * 20
  x = F.max_pool2d(x, 3, 1, 1)
  x = F.relu(conv7(F.relu(conv6(x))))
  return conv4_3, x


def fc_as_conv(weight, bias, kernel, dilation):
  conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], kernel, padding=dilation * (kernel // 2),
                         dilation=dilation)
  conv.weight.data, conv.bias.data = weight.contiguous(), bias.contiguous()
  return conv


def jax_base(backbone_params, images):
  """Our Backbone (sources conv4_3, conv7) on NHWC images; conv4_3_norm at its init, 20."""
  params = dict(backbone_params, conv4_3_norm={'scale': jnp.full((512,), 20.0)})
  outs = vgg16.VGG16Backbone(sources=('conv4_3', 'conv7')).apply({'params': params}, images)
  return [np.asarray(o).transpose(0, 3, 1, 2) for o in outs]


def assert_close(ours, theirs, rtol=2e-4):
  """Equal up to float32 rounding relative to the tensor's scale."""
  theirs = np.asarray(theirs)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * np.abs(theirs).max())


def restore_backbone(output):
  """The converted base as training's model.init_checkpoint sees it: (backbone
  params, load_matching_params' report)."""
  init = Task.of(convert.formats()['vgg16'].base()).abstract_variables['params']
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init)
  params, report = runs.load_matching_params(str(output), init)
  return params['backbone'], report


@pytest.fixture(scope='module')
def pixels():
  return np.random.default_rng(0).uniform(0, 255, (2, 300, 300, 3)).astype(np.float32)


def test_vgg16_base_gives_pytorchs_conv4_3_and_conv7(tmp_path, pixels):
  torch.manual_seed(0)
  vgg = torchvision.models.vgg16().eval()
  torch.save(vgg.state_dict(), tmp_path / 'vgg16.pth')
  mean = 255 * np.array(vgg16.IMAGENET_MEAN)  # exact also at the image border
  out = convert.convert('vgg16', str(tmp_path / 'vgg16.pth'), str(tmp_path / 'out'),
                        mean_rgb=tuple(mean))
  backbone, report = restore_backbone(out)
  assert {p.split('/')[1] for p in report['restored']} == set(vgg16.VGG_CONVS) | {'conv6',
                                                                                     'conv7'}
  fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
  conv6 = fc_as_conv(fc6.weight.view(4096, 512, 7, 7)[::4, :, ::3, ::3], fc6.bias[::4], 3, 6)
  conv7 = fc_as_conv(fc7.weight[::4, ::4, None, None], fc7.bias[::4], 1, 1)
  x = (torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255
       - torch.tensor(vgg16.IMAGENET_MEAN)[:, None, None]) / torch.tensor(
           vgg16.IMAGENET_STD)[:, None, None]
  with torch.no_grad():
    expected = torch_base([vgg.features[i] for i in vgg16.VGG_INDICES], conv6, conv7, x)
  for ours, theirs in zip(jax_base(backbone, pixels - mean), expected, strict=True):
    assert ours.shape == theirs.shape
    assert_close(ours, theirs)


def test_normalisation_folds_into_conv1_1_for_any_mean():
  rng = np.random.default_rng(1)
  conv = {'kernel': rng.normal(size=(3, 3, 3, 8)).astype(np.float32),
          'bias': rng.normal(size=8).astype(np.float32)}
  mean_rgb = (120.0, 110.0, 100.0)
  folded = vgg16.fold_input_normalisation(conv, vgg16.IMAGENET_MEAN, vgg16.IMAGENET_STD,
                                            mean_rgb)
  pixels = rng.uniform(0, 255, (1, 12, 12, 3)).astype(np.float32)
  normalised = (pixels / 255 - np.array(vgg16.IMAGENET_MEAN)) / np.array(vgg16.IMAGENET_STD)

  def apply(params, x):
    return np.asarray(jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32), params['kernel'], (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['bias'])

  ours = apply(folded, pixels - np.array(mean_rgb))[:, 1:-1, 1:-1]  # inside the border
  np.testing.assert_allclose(ours, apply(conv, normalised)[:, 1:-1, 1:-1], atol=1e-4)


def reduced_vgg_modules():
  """A module list in the vgg16_reducedfc.pth layout, randomly initialised:
  convs at VGG_INDICES, conv6 (3x3, dilation 6) at 31, conv7 (1x1) at 33."""
  layers = [torch.nn.Identity() for _ in range(35)]
  channels = 3
  for i, (b, convs) in zip(vgg16.VGG_INDICES, [(b, f) for b, fs in enumerate(
      vgg16.VGG16_BLOCKS) for f in fs]):
    layers[i] = torch.nn.Conv2d(channels, convs, 3, padding=1)
    channels = convs
  layers[31] = torch.nn.Conv2d(512, 1024, 3, padding=6, dilation=6)
  layers[33] = torch.nn.Conv2d(1024, 1024, 1)
  return torch.nn.ModuleList(layers)


def test_reduced_vgg_base_gives_pytorchs_features_on_bgr_input(tmp_path, pixels):
  torch.manual_seed(1)
  vgg = reduced_vgg_modules().eval()
  torch.save({f'vgg.{k}': v for k, v in vgg.state_dict().items()}, tmp_path / 'reduced.pth')
  run = subprocess.run([sys.executable, '-m', 'ssd_jax.convert', '--format=reduced_vgg',
                        f'--input={tmp_path / "reduced.pth"}', f'--output={tmp_path / "out"}'],
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  assert 'init_checkpoint=' in run.stdout
  backbone, _ = restore_backbone(tmp_path / 'out')
  assert json.loads((tmp_path / 'out' / 'conversion.json').read_text())['channel_order'] == 'bgr'
  mean = np.array(config_lib.MEAN_RGB)
  bgr = torch.from_numpy((pixels - mean)[..., ::-1].astype(np.float32)).permute(0, 3, 1, 2)  # Caffe's input
  with torch.no_grad():
    expected = torch_base([vgg[i] for i in vgg16.VGG_INDICES], vgg[31], vgg[33], bgr)
  for ours, theirs in zip(jax_base(backbone, pixels - mean), expected, strict=True):
    assert_close(ours, theirs)


@pytest.fixture(scope='module')
def torchvision_ssd(tmp_path_factory):
  """A random ssd300_vgg16, saved and converted. Its random VGG gives huge
  features; the class heads are scaled down so scores do not saturate at 1."""
  torch.manual_seed(2)
  net = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()
  with torch.no_grad():
    for conv in net.head.classification_head.module_list:
      conv.weight.mul_(0.003)
  folder = tmp_path_factory.mktemp('tv_ssd')
  torch.save(net.state_dict(), folder / 'ssd300.pth')
  out = convert.convert('torchvision_ssd300', str(folder / 'ssd300.pth'), str(folder / 'out'))
  return net, detector.Detector.from_checkpoint(out)


def test_torchvision_ssd300_gives_the_same_regressions_and_logits(torchvision_ssd, pixels,
                                                                 load_config):
  net, det = torchvision_ssd
  recipe = config_lib.validate(load_config('coco300_torchvision'))
  assert det.config.to_json() == recipe.to_json()  # config.json
  mean = np.array(recipes.TORCHVISION_MEAN)
  x = (torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255 - torch.tensor(mean)[:, None, None]
       ) * 255  # torchvision's Normalize(mean, std=1/255)
  with torch.no_grad():
    features = list(net.backbone(x.float()).values())
    expected = net.head(features)
    their_anchors = net.anchor_generator(ImageList(x, [(300, 300)] * len(x)), features)[0]
  loc, logits = builders.build_model(det.config).apply({'params': det.params},
                                                      pixels - 255 * mean)
  assert_close(np.asarray(loc), expected['bbox_regression'])
  assert_close(np.asarray(logits), expected['cls_logits'][..., list(labels.TORCHVISION_CLASS_ORDER)])
  anchors = box_utils.cxcywh_to_xyxy(builders.build_default_boxes(det.config)) * 300
  np.testing.assert_allclose(anchors, their_anchors.numpy(), atol=1e-3)  # pixels xyxy


def test_torchvision_ssd300_gives_the_same_detections(torchvision_ssd, tmp_path):
  """Image files through --mode=predict's code (COCO results JSON) against the
  torchvision model on the same pixels."""
  net, det = torchvision_ssd
  rng = np.random.default_rng(3)
  images = {'a.png': rng.integers(0, 256, (240, 320, 3), np.uint8),
            'b.png': rng.integers(0, 256, (300, 200, 3), np.uint8)}
  for name, image in images.items():
    Image.fromarray(image).save(tmp_path / name)
  out = workflows.predict_files(det, str(tmp_path / '*.png'), str(tmp_path / 'out'))
  found = json.loads(open(out['detections']).read())
  with torch.no_grad():
    expected = net([torch.from_numpy(im).permute(2, 0, 1).float() / 255
                    for im in images.values()])
  for name, theirs in zip(images, expected, strict=True):
    theirs = {k: v.numpy() for k, v in theirs.items()}
    ours = detections.from_coco_results(found, name)
    ours['labels'] = ours.pop('classes')
    assert len(ours['scores']) == len(theirs['scores']) == 200
    assert_same_detections(ours, theirs)
    assert_same_detections(theirs, ours)


def assert_same_detections(a, b, score_tol=1e-5, box_tol=0.05):
  """Each detection of `a` has one in `b` with the same label, its score within
  score_tol and its pixel box within box_tol (the JSON rounds scores to 1e-5 and
  boxes to 0.01 px), except those that tie (within
  score_tol) with the last detection kept, where the 200 may be cut differently.
  Near-equal scores may come in either order, so this is a matching, not a zip."""
  cut = min(a['scores'].min(), b['scores'].min()) + score_tol
  for box, score, label in zip(a['boxes'], a['scores'], a['labels']):
    if score <= cut:
      continue
    partner = ((b['labels'] == label) & (np.abs(b['scores'] - score) <= score_tol)
               & np.all(np.abs(b['boxes'] - box) <= box_tol, axis=1))
    assert partner.any(), f'no partner for label {label} score {score} box {box}'


def test_bad_inputs_get_errors_that_name_the_file_and_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.pth does not exist'):
    convert.convert('vgg16', str(tmp_path / 'missing.pth'), str(tmp_path / 'o'))
  (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='cannot read .*junk.pth as a PyTorch state dict'):
    convert.convert('vgg16', str(tmp_path / 'junk.pth'), str(tmp_path / 'o'))
  with pytest.raises(ValueError, match="--format='vgg' is not one of"):
    convert.convert('vgg', str(tmp_path / 'junk.pth'), str(tmp_path / 'o'))
  small = {f'{i}.{p}': torch.zeros((8, 3, 3, 3) if p == 'weight' else (8,))
           for i in list(vgg16.VGG_INDICES) + [31, 33] for p in ('weight', 'bias')}
  torch.save(small, tmp_path / 'small.pth')
  with pytest.raises(ValueError, match="small.pth has no tensor 'features.0.weight'.*--format"):
    convert.convert('vgg16', str(tmp_path / 'small.pth'), str(tmp_path / 'o'))
  with pytest.raises(ValueError, match=r'small.pth: backbone/conv1_1/kernel converts to shape '
                     r'\(3, 3, 3, 8\) but the model needs \(3, 3, 3, 64\)'):
    convert.convert('reduced_vgg', str(tmp_path / 'small.pth'), str(tmp_path / 'o'))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep.txt').write_text('mine')
  conv1 = torch.nn.Conv2d(3, 64, 3).state_dict()
  torch.save({'state_dict': {f'module.{i}.{k}': v for i in list(vgg16.VGG_INDICES)[:1]
                             for k, v in conv1.items()}}, tmp_path / 'wrapped.pth')
  with pytest.raises(ValueError, match="wrapped.pth has no tensor '2.weight'"):  # unwrapped
    convert.convert('reduced_vgg', str(tmp_path / 'wrapped.pth'), str(tmp_path / 'o'))
  with pytest.raises(FileExistsError, match='full is not empty'):
    convert.convert('reduced_vgg', str(tmp_path / 'wrapped.pth'), str(tmp_path / 'full'))
  assert not (tmp_path / 'o').exists()
  assert [p.name for p in (tmp_path / 'full').iterdir()] == ['keep.txt']
