"""A model family is one new module: docs/models.md's TinyNet, written into a copy
of the package with nothing else changed, is found by name by the weights
listing, by training from its published weights (served on 127.0.0.1) and by
prediction, each run as the docs type it."""
import collections
import hashlib
import importlib.util
import json
import shutil

import numpy as np
import pytest

from ssd_jax import checkpoints, detector, models, workdirs
from ssd_jax.task import Task
from ssd_jax.testing import commands, detections, synthetic, weights_server

torch = pytest.importorskip('torch')
DOC = 'docs/models.md'  # (spelled out in commands.find calls: the coverage test reads them)
FAMILY_FILE, CONFIG_FILE = 'ssd_jax/models/tinynet.py', 'configs/tiny_shapes.py'


def documented_files() -> dict[str, str]:
  """The python blocks of docs/models.md that begin with '# <path>': path -> text."""
  blocks = commands.fenced_blocks((commands.ROOT / DOC).read_text(), 'python')
  return {b.split('\n', 1)[0][2:].strip(): b for b in blocks if b.startswith('# ')}


def package_copy_with(folder, files: dict[str, str]):
  """`folder` holding a copy of ssd_jax/ and configs/ plus `files`, which must be new."""
  for name in ('ssd_jax', 'configs'):
    shutil.copytree(commands.ROOT / name, folder / name,
                    ignore=shutil.ignore_patterns('__pycache__'))
  for path, text in files.items():
    assert not (folder / path).exists(), f'{path} would replace a file of the package'
    (folder / path).write_text(text)
  return folder


def seeded_tinynet():
  """A PyTorch TinyNet as the family's converter reads it (conv1, conv2), seeded."""
  torch.manual_seed(0)
  conv = torch.nn.Conv2d
  return torch.nn.Sequential(collections.OrderedDict(
      conv1=conv(3, 16, 3, stride=4, padding=1), conv2=conv(16, 16, 3, stride=2, padding=1)))


def mirror_of(folder, net, name: str, file: str):
  """Saves `net`'s state dict as `file` in `folder` and a manifest pinning its SHA-256."""
  folder.mkdir()
  torch.save(net.state_dict(), folder / file)
  digest = hashlib.sha256((folder / file).read_bytes()).hexdigest()
  (folder / 'manifest.json').write_text(json.dumps({name: {'file': file, 'sha256': digest}}))
  return folder / 'manifest.json'


@pytest.fixture
def tinynet_registered(monkeypatch, tmp_path):
  """This process's models.families() with the documented TinyNet in it (loaded from
  the docs' text as a module of its own), to read what the copy wrote."""
  path = tmp_path / 'tinynet_module.py'
  path.write_text(documented_files()[FAMILY_FILE])
  spec = importlib.util.spec_from_file_location('tinynet_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setitem(models.families(), 'tinynet', module.FAMILY)
  return module.FAMILY


def test_a_family_written_as_one_module_is_listed_trained_from_its_name_and_predicts(
    tmp_path, tinynet_registered):
  files = documented_files()
  assert sorted(files) == [CONFIG_FILE, FAMILY_FILE]
  repo = package_copy_with(tmp_path / 'repo', files)
  net = seeded_tinynet()
  published = tinynet_registered.published['tinynet_shapes']
  manifest = mirror_of(tmp_path / 'mirror', net, 'tinynet_shapes', published.file)
  server = weights_server.Server(tmp_path / 'mirror')
  env = {**commands.ONE_DEVICE,
         **weights_server.environment(server.url, manifest, tmp_path / 'cache')}
  try:
    listed = commands.run(commands.find('python -m ssd_jax.pretrained', 'docs/models.md'), repo,
                          env=env)
    shrink = ['--config.train.num_steps=1', '--config.train.batch_size=2',
              '--config.train.checkpoint_every=1', '--config.train.log_every=1']
    commands.run(commands.find('--config.model.init_from=tinynet_shapes', 'docs/models.md'), repo,
                 shrink + synthetic.squares_folder_overrides(repo), env)
  finally:
    server.stop()
  rows = {line.split()[0]: line.split(None, 4)[1:] for line in listed.splitlines()[2:]}
  assert rows['tinynet_shapes'] == ['tinynet', 'base', '-', published.about]
  assert sorted(rows) == sorted(models.published())  # every family's names (TinyNet's here too)

  workdir = str(repo / 'tiny_shapes')
  variables, _ = checkpoints.restore_variables(Task.of(workdirs.find_config(workdir)), workdir)
  for name in ('conv1', 'conv2'):  # trained from the served weights: one step moves them a little
    ours = np.asarray(variables['params']['backbone'][name]['kernel'])
    theirs = getattr(net, name).weight.detach().numpy().transpose(2, 3, 1, 0)
    assert ours.shape == theirs.shape
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999, name

  (repo / 'photos').mkdir()
  from PIL import Image
  photo = synthetic.sample_photos()[2]
  Image.fromarray(photo).save(repo / 'photos' / 'a.png')
  commands.run(commands.find('--mode=predict --workdir=/tmp/tiny_shapes', 'docs/models.md'), repo,
               env=env)
  found = json.loads((repo / 'tiny_shapes' / 'predictions' / 'detections.json').read_text())
  ours = detections.from_coco_results(found, 'a.png')
  expected = detector.Detector.from_checkpoint(workdir).detect([photo])[0]
  assert len(expected['scores']) > 0
  assert not detections.unmatched(ours, expected, score_tol=1e-4, box_tol=0.1)
