"""A model family is one new module: docs/models.md's TinyNet, written into a copy
of the package with nothing else changed, or installed in a package of its own
under the docs' entry point, is found by name by the weights listing, by
training from its published weights (served on 127.0.0.1) and by prediction,
each run as the docs type it."""
import collections
import importlib.util
import json
import os
import shutil
import sys
import tomllib

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


def installed_package_with(folder, site, family: str, config: str):
  """`site` (a folder for PYTHONPATH) holding the package the docs' entry point
  names, with the family module, and its distribution's metadata declaring that
  entry point, as `pip install` writes them; `folder` a user's folder holding the
  config. Returns `folder`."""
  toml, = commands.fenced_blocks((commands.ROOT / DOC).read_text(), 'toml')
  points = tomllib.loads(toml)['project']['entry-points'][models.ENTRY_POINT_GROUP]
  (name, module), = points.items()
  package, _, leaf = module.rpartition('.')
  (site / package).mkdir(parents=True)
  (site / package / '__init__.py').write_text('')
  (site / package / f'{leaf}.py').write_text(family)
  info = site / f'{package}-0.1.dist-info'
  info.mkdir()
  (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n')
  (info / 'entry_points.txt').write_text(f'[{models.ENTRY_POINT_GROUP}]\n{name} = {module}\n')
  (folder / 'configs').mkdir(parents=True)
  (folder / CONFIG_FILE).write_text(config)
  return folder


def seeded_tinynet():
  """A PyTorch TinyNet as the family's converter reads it (conv1, conv2), seeded."""
  torch.manual_seed(0)
  conv = torch.nn.Conv2d
  return torch.nn.Sequential(collections.OrderedDict(
      conv1=conv(3, 16, 3, stride=4, padding=1), conv2=conv(16, 16, 3, stride=2, padding=1)))


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


@pytest.mark.parametrize('added', ['in the package', 'as an installed package'])
def test_a_family_written_as_one_module_is_listed_trained_from_its_name_and_predicts(
    added, tmp_path, tinynet_registered):
  files = documented_files()
  assert sorted(files) == [CONFIG_FILE, FAMILY_FILE]
  env = dict(commands.ONE_DEVICE)
  if added == 'in the package':
    repo = package_copy_with(tmp_path / 'repo', files)
  else:
    site = tmp_path / 'site'
    repo = installed_package_with(tmp_path / 'user', site, files[FAMILY_FILE], files[CONFIG_FILE])
    env['PYTHONPATH'] = os.pathsep.join([str(site), os.environ.get('PYTHONPATH', '')])
  net = seeded_tinynet()
  published = tinynet_registered.published['tinynet_shapes']
  (tmp_path / 'mirror').mkdir()
  manifest = weights_server.publish(tmp_path / 'mirror', net, 'tinynet_shapes', published.file)
  server = weights_server.Server(tmp_path / 'mirror')
  env.update(weights_server.environment(server.url, manifest, tmp_path / 'cache'))
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


@pytest.fixture
def installed(monkeypatch, tmp_path):
  """Returns install(name, text): a module of `text` on sys.path, named by this
  process's only entry point of the families' group; families() found afresh."""
  from importlib import metadata

  def install(name: str, text: str):
    (tmp_path / f'{name}.py').write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)  # another test's module of that name
    point = metadata.EntryPoint(name, name, models.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, 'entry_points',
                        lambda group: [point] if group == models.ENTRY_POINT_GROUP else [])
    models.families.cache_clear()

  yield install
  models.families.cache_clear()


@pytest.mark.parametrize('text, error, message', [
    pytest.param('X = 1\n', TypeError,
                 r'entry point plugin = plugin of ssd_jax\.families \(package \?\) names a '
                 r'module without FAMILY', id='no FAMILY'),
    pytest.param('import a_module_nobody_installed\n', ImportError,
                 r'plugin = plugin .* cannot be imported \(No module named '
                 r'.a_module_nobody_installed.\); fix or uninstall that package',
                 id='cannot be imported'),
    pytest.param('from ssd_jax.models import vgg16\nFAMILY = vgg16.FAMILY\n', ValueError,
                 r'ssd_jax\.models\.vgg16 and the entry point plugin = plugin .* both name '
                 r"the backbone 'vgg16'", id='a backbone taken'),
])
def test_an_installed_family_that_cannot_be_one_is_named(installed, text, error, message):
  installed('plugin', text)
  with pytest.raises(error, match=message):
    models.families()


def test_an_installed_family_joins_the_packages(installed):
  text = documented_files()[FAMILY_FILE]
  installed('tinynet_plugin', text)
  assert sorted(models.families()) == ['mobilenet_v3_large', 'resnet50', 'tinynet', 'vgg16']
  assert models.family('tinynet').architectures.keys() == {'tiny96'}
