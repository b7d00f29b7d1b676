"""ssd_jax.models.resnet against SSD300-ResNet50 as NVIDIA's DeepLearningExamples
writes it (ssd_jax.testing.nvidia_ssd300: torchvision's resnet50 and their
blocks, randomly initialised with random BatchNorm statistics): the default
boxes, the feature maps, the head outputs and, through --mode=predict, the
detections of their decoder."""
import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch', reason='torch is not installed; pip install -e ".[test]"')
torchvision = pytest.importorskip('torchvision', reason='pip install -e ".[test]"')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from ssd_jax import (  # noqa: E402
    builders, checkpoints, config_lib, convert, labels, losses, matching, optim, workdirs)
from ssd_jax.models import heads, resnet, torch_weights  # noqa: E402
from ssd_jax.testing import commands, detections, synthetic  # noqa: E402
from ssd_jax.task import Task  # noqa: E402
from ssd_jax.testing.nvidia_ssd300 import (  # noqa: E402
    NvidiaLoss, NvidiaSSD300, nvidia_decode, nvidia_default_boxes, nvidia_encode)
from ssd_jax.testing.torch_reference import numpy_state_dict, randomise_batch_norms  # noqa: E402

LEVELS = ((38, 4), (19, 6), (10, 6), (5, 6), (3, 4), (1, 4))  # (map side, boxes per location)


@pytest.fixture(scope='module')
def nvidia():
  """Their SSD300, seeded; BatchNorm statistics from a calibration batch, then
  perturbed; each head conv scaled to outputs of standard deviation 1 (logits
  of a random deep net are otherwise so large that every score is 1.0) and the
  background's bias lowered, so that some scores pass their 0.05 threshold
  and scores differ."""
  torch.manual_seed(0)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  model = NvidiaSSD300()
  x = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (2, 3, 300, 300)).astype(np.float32))
  randomise_batch_norms(model, model, x, seed=2)
  with torch.no_grad():
    for source, loc, conf, k in zip(model.maps(x), model.loc, model.conf, model.num_defaults):
      for conv in (loc, conf):
        scale = conv(source).std()
        conv.weight /= scale
        conv.bias /= scale
      conf.bias[:k] -= 2.0  # channel = class * k + box: class 0 of every box
  yield model
  torch.set_num_threads(threads)


def ours_in_their_order(ours: np.ndarray) -> np.ndarray:
  """[B, A, D] in ssd_jax's (row, column, box) order per level -> [B, D, A] in
  NVIDIA's (box, row, column) order."""
  out, start = [], 0
  for side, k in LEVELS:
    n = side * side * k
    level = ours[:, start:start + n].reshape(ours.shape[0], side, side, k, -1)
    out.append(level.transpose(0, 4, 3, 1, 2).reshape(ours.shape[0], -1, n))
    start += n
  return np.concatenate(out, axis=2)


def test_default_boxes_are_theirs():
  config = config_lib.validate(resnet.nvidia_ssd300())
  ours = builders.build_default_boxes(config)
  assert ours.shape == (8732, 4)
  np.testing.assert_allclose(ours_in_their_order(ours[None])[0].T,
                             nvidia_default_boxes().numpy(), atol=1e-6)


def objects(seed: int, batch: int = 3, num: int = 6, classes: int = 81):
  """Padded ground truth f32[B, G, 4] normalised xyxy, i32[B, G]: objects 0 and 1
  of each image share one box (and so a best default box) but not a class; image 0
  has two padding rows, the last image no objects."""
  rng = np.random.default_rng(seed)
  centres, sizes = rng.uniform(0.15, 0.85, (batch, num, 2)), rng.uniform(0.05, 0.6, (batch, num, 2))
  boxes = np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], -1), 0, 1)
  boxes[:, 1] = boxes[:, 0]
  classes_ = rng.integers(1, classes - 1, (batch, num))
  classes_[:, 1] = classes_[:, 0] + 1
  classes_[0, 4:], classes_[-1] = 0, 0
  return boxes.astype(np.float32), classes_.astype(np.int32)


def test_the_recipes_matching_and_loss_are_theirs(seed=0):
  """nvidia_ssd300's matching.rule and loss.normalize against their Encoder.encode
  and Loss: the same classes and box targets per default box, and the same loss."""
  config = config_lib.validate(resnet.nvidia_ssd300())
  anchors = np.asarray(builders.build_default_boxes(config))  # f32[A, 4] cxcywh
  boxes, classes = objects(seed)
  loc_t, cls_t = matching.match(jnp.asarray(boxes), jnp.asarray(classes), anchors,
                                config.matching.iou_threshold, config.anchors.variances,
                                config.matching.rule)
  gloc, glabel = [], []
  for b, c in zip(boxes, classes):
    if (c > 0).any():
      targets = nvidia_encode(torch.tensor(b[c > 0]), torch.tensor(c[c > 0]).long(),
                              torch.tensor(anchors))
    else:  # their data has no image without objects
      targets = torch.tensor(anchors), torch.zeros(len(anchors), dtype=torch.long)
    gloc.append(targets[0])
    glabel.append(targets[1])
  gloc, glabel = torch.stack(gloc), torch.stack(glabel)
  np.testing.assert_array_equal(np.asarray(cls_t), glabel.numpy())
  d = torch.tensor(anchors)
  their_offsets = torch.cat([10 * (gloc[..., :2] - d[:, :2]) / d[:, 2:],
                             5 * torch.log(gloc[..., 2:] / d[:, 2:])], -1)
  np.testing.assert_allclose(np.asarray(loc_t), their_offsets.numpy(), atol=2e-5)

  rng = np.random.default_rng(seed + 10)
  loc_pred = rng.normal(0, 1, loc_t.shape).astype(np.float32)
  logits = rng.normal(0, 2, (*cls_t.shape, config.model.num_classes)).astype(np.float32)
  ours, _ = losses.multibox_loss(loc_pred, logits, loc_t, cls_t, config.loss.neg_pos_ratio,
                                 config.loss.loc_weight, config.loss.normalize)
  theirs = NvidiaLoss(d)(torch.tensor(loc_pred).transpose(1, 2), torch.tensor(logits).transpose(1, 2),
                         gloc.transpose(1, 2), glabel)
  np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


def test_the_recipes_warmup_is_theirs():
  """Their main.py's warmup: step i (from 0) at i / 300 of the rate, then the rate."""
  config = config_lib.validate(resnet.nvidia_ssd300())
  schedule = optim.learning_rate_schedule(config.optim, batch_size=resnet.NVIDIA_BATCH)
  steps = np.array([0, 1, 150, 299, 300, 1000])
  np.testing.assert_allclose([float(schedule(s)) for s in steps],
                             2.6e-3 * np.minimum(steps / 300, 1.0), rtol=1e-6)


def test_converted_weights_give_their_maps_and_head_outputs(nvidia):
  """float64 on both sides: the same layers, down to rounding."""
  x = np.random.default_rng(3).normal(0, 1, (1, 300, 300, 3))
  model = NvidiaSSD300()
  model.load_state_dict(nvidia.state_dict())
  model = model.double().eval()
  with torch.no_grad():
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    their_maps = [m.numpy() for m in model.maps(t)]
    their_locs, their_confs = (a.numpy() for a in model(t))
  sd = torch_weights.StateDict(numpy_state_dict(nvidia))
  variables = resnet.nvidia_ssd300_variables(sd)
  backbone = resnet.ResNet50Backbone(dtype=jnp.float64, param_dtype=jnp.float64)
  head = heads.MultiBoxHead(81, (4, 6, 6, 6, 4, 4), resnet.SOURCES, dtype=jnp.float64,
                            param_dtype=jnp.float64)
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    maps = backbone.apply({k: v['backbone'] for k, v in variables.items()}, x)
    locs, logits = head.apply({'params': variables['params']['head']}, maps)
    locs, logits = np.asarray(locs, np.float64), np.asarray(logits, np.float64)
  for ours, theirs in zip(maps, their_maps, strict=True):
    ours = np.asarray(ours).transpose(0, 3, 1, 2)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-9 * np.abs(theirs).max()
  # the head's outputs are float32 by contract
  np.testing.assert_allclose(ours_in_their_order(locs), their_locs, rtol=0,
                             atol=1e-5 * np.abs(their_locs).max())
  np.testing.assert_allclose(ours_in_their_order(logits), their_confs, rtol=0,
                             atol=1e-5 * np.abs(their_confs).max())


def test_the_heads_start_as_theirs():
  """Their _init_weights: Xavier-uniform conv weights, biases left at PyTorch's
  default, uniform in +-1/sqrt(fan_in); each head conv of the model their
  config builds draws from the same ranges as theirs (bounds computed by hand
  from each conv's shape)."""
  torch.manual_seed(0)
  theirs = NvidiaSSD300(81)
  channels = [conv.in_channels for conv in theirs.conf]
  maps = [jnp.zeros((1, 2, 2, c)) for c in channels]
  ours = Task.of(resnet.nvidia_ssd300()).model.head.init(jax.random.key(0), maps)['params']
  scaled = {'ours': [], 'theirs': []}  # each bias over its bound
  for name, c, k, loc, conf in zip(resnet.SOURCES, channels, (4, 6, 6, 6, 4, 4), theirs.loc,
                                   theirs.conf, strict=True):
    for suffix, outputs, torch_conv in (('loc', 4 * k, loc), ('conf', 81 * k, conf)):
      weight_bound = np.sqrt(6 / (9 * c + 9 * outputs))
      bias_bound = 1 / np.sqrt(9 * c)
      for who, kernel, bias in (
          ('ours', ours[f'{name}_{suffix}']['kernel'], ours[f'{name}_{suffix}']['bias']),
          ('theirs', torch_conv.weight.detach().numpy(), torch_conv.bias.detach().numpy())):
        assert weight_bound * 0.99 < np.abs(kernel).max() <= weight_bound, (who, name, suffix)
        scaled[who].append(np.asarray(bias) / bias_bound)
  for who, biases in scaled.items():  # 2550 draws, uniform in [-1, 1]
    b = np.concatenate(biases)
    assert np.abs(b).max() <= 1 and np.abs(b).max() > 0.99, who
    assert abs(b.std() - 1 / np.sqrt(3)) < 0.03 and abs(b.mean()) < 0.05, who


def test_parameter_and_statistic_counts_are_theirs(nvidia):
  config = config_lib.validate(resnet.nvidia_ssd300())
  variables = jax.eval_shape(lambda: builders.init_variables(config, jax.random.key(0)))
  count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))  # noqa: E731
  assert count(variables['params']) == sum(p.numel() for p in nvidia.parameters())
  assert count(variables['batch_stats']) == sum(
      b.numel() for name, b in nvidia.named_buffers() if 'running' in name)


def test_their_checkpoint_converts_and_predicts_their_detections(nvidia, tmp_path):
  """coco300_resnet50.py's commands as typed: their model saved as their training
  saves it ({'model': state dict, ...}) under the published name, converted,
  then --mode=predict on photos/ without --config. Against their decoder on
  the same resized, normalised pixels: same classes, scores within 1e-4, boxes
  within 0.1 px. Neither clips boxes to the image (eval.clip_boxes=False)."""
  folder = commands.scratch(tmp_path)
  torch.save({'epoch': 64, 'model': nvidia.state_dict(), 'label_map': {}},
             folder / 'nvidia_ssdpyt_amp_200703.pt')
  rng = np.random.default_rng(5)
  images = {'a.png': rng.integers(0, 256, (240, 320, 3), np.uint8),
            'b.png': rng.integers(0, 256, (360, 270, 3), np.uint8)}
  (folder / 'photos').mkdir()
  for name, image in images.items():
    Image.fromarray(image).save(folder / 'photos' / name)
  printed = commands.run(
      commands.find('--format=nvidia_ssd300', 'configs/coco300_resnet50.py'), folder,
      env=commands.ONE_DEVICE)
  assert f'--mode=eval/predict --workdir={folder / "nvidia_ssd300"}' in printed
  saved = json.loads((folder / 'nvidia_ssd300' / 'config.json').read_text())
  assert saved['eval']['clip_boxes'] is False and saved['model']['backbone'] == 'resnet50'
  commands.run(
      commands.find('--mode=predict --workdir=/tmp/nvidia_ssd300', 'configs/coco300_resnet50.py'),
      folder, env=commands.ONE_DEVICE)
  found = json.loads((folder / 'nvidia_ssd300' / 'predictions' / 'detections.json').read_text())
  mean = torch.tensor(resnet.IMAGENET_MEAN)[:, None, None]
  std = torch.tensor(resnet.IMAGENET_STD)[:, None, None]
  dboxes = nvidia_default_boxes()
  ids = np.array((0,) + labels.COCO_CATEGORY_IDS)
  for name, image in images.items():
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, size=(300, 300), mode='bilinear', align_corners=False)
    with torch.no_grad():
      locs, confs = nvidia((x / 255 - mean) / std)
    boxes, classes, scores = nvidia_decode(locs[0], confs[0], dboxes)
    h, w = image.shape[:2]
    theirs = {'boxes': boxes.numpy() * [w, h, w, h], 'scores': scores.numpy(),
              'classes': ids[classes.numpy()]}
    ours = detections.from_coco_results(found, name)
    assert len(theirs['scores']) >= 20, 'too few detections to compare'
    assert len(ours['scores']) == len(theirs['scores'])
    assert not detections.unmatched(ours, theirs, score_tol=1e-4, box_tol=0.1)


def test_imagenet_base_converts_and_initialises_training(tmp_path):
  """coco300_resnet50.py's training commands as typed: torchvision's ResNet-50
  converted, then one step of batch 2 from it on a small folder; the stem's
  kernel is still the converted one."""
  folder = commands.scratch(tmp_path)
  torch.manual_seed(7)
  net = torchvision.models.resnet50(weights=None)
  torch.save(net.state_dict(), folder / 'resnet50-11ad3fa6.pth')
  commands.run(commands.find('--format=resnet50', 'configs/coco300_resnet50.py'), folder,
               env=commands.ONE_DEVICE)
  shrink = ['--config.train.num_steps=1', '--config.train.batch_size=2',
            '--config.train.checkpoint_every=1', '--config.train.log_every=1']
  commands.run(
      commands.find('--config.model.init_checkpoint=/tmp/resnet50', 'configs/coco300_resnet50.py'),
      folder, shrink + synthetic.squares_folder_overrides(folder), commands.ONE_DEVICE)
  workdir = str(folder / 'coco300_resnet50')
  variables, _ = checkpoints.restore_variables(Task.of(workdirs.find_config(workdir)), workdir)
  kernel = np.asarray(variables['params']['backbone']['conv1']['conv']['kernel'])
  theirs = net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)
  # One step at the warmup's first rate moves it a little; a fresh one is uncorrelated.
  assert np.corrcoef(kernel.ravel(), theirs.ravel())[0, 1] > 0.999


def test_torchvision_resnet50_converts_to_the_base(tmp_path):
  """torchvision's ImageNet ResNet-50 layout through convert's 'resnet50' format:
  the stem and layer1..layer3 load into the backbone and give torchvision's
  layer3 (with NVIDIA's stride change) on the same input; the rest is dropped."""
  torch.manual_seed(4)
  net = torchvision.models.resnet50(weights=None)
  randomise_batch_norms(net, net, torch.randn(2, 3, 64, 64), seed=5)
  torch.save(net.state_dict(), tmp_path / 'resnet50.pth')
  out = convert.convert('resnet50', str(tmp_path / 'resnet50.pth'), str(tmp_path / 'out'))
  assert json.loads(open(f'{out}/conversion.json').read())['format'] == 'resnet50'
  variables = resnet.resnet50_variables(torch_weights.StateDict(numpy_state_dict(net)))
  assert 'layer4' not in str(jax.tree_util.tree_structure(variables))
  block = net.layer3[0]
  block.conv2.stride, block.downsample[0].stride = (1, 1), (1, 1)
  x = np.random.default_rng(6).normal(0, 1, (1, 96, 96, 3)).astype(np.float32)
  with torch.no_grad():
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    theirs = torch.nn.Sequential(*list(net.children())[:7])(t).numpy()
  ours = resnet.ResNet50Backbone(sources=('layer3',)).apply(
      {k: v['backbone'] for k, v in variables.items()}, x)[0]
  ours = np.asarray(ours).transpose(0, 3, 1, 2)
  assert ours.shape == theirs.shape == (1, 1024, 12, 12)
  assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_a_state_dict_of_another_network_is_named(tmp_path):
  net = torchvision.models.resnet18(weights=None)
  torch.save(net.state_dict(), tmp_path / 'resnet18.pth')
  with pytest.raises(ValueError,
                     match=r"resnet18.pth: layer1 has blocks \[0, 1\], not ResNet-50's"):
    convert.convert('resnet50', str(tmp_path / 'resnet18.pth'), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()
