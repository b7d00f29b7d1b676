"""Published weights by name (ssd_jax.pretrained) against an HTTP server on
127.0.0.1 that serves seeded torchvision state dicts: downloaded once, verified,
converted, reused with the server stopped; a wrong or cut file leaves nothing."""
import hashlib
import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssd_jax import convert, detector, models, pretrained
from ssd_jax.testing import commands, detections, synthetic, weights_server
from ssd_jax.task import Task

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
NAME = 'ssdlite320_mobilenet_v3_large_coco'


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  """A folder with a seeded SSDLite state dict under its published file name, the
  model itself, and a manifest giving that file's SHA-256."""
  folder = tmp_path_factory.mktemp('mirror')
  model, manifest = weights_server.seeded_ssdlite(folder, NAME)
  return folder, model, manifest


def serve(monkeypatch, folder, manifest, cache, cut: bool = False) -> weights_server.Server:
  """A Server of `folder`, and the environment that points ssd_jax.pretrained at it."""
  server = weights_server.Server(folder, cut)
  for name, value in weights_server.environment(server.url, manifest, cache).items():
    monkeypatch.setenv(name, value)
  return server


@pytest.fixture
def mirror(served, tmp_path, monkeypatch):
  folder, model, manifest = served
  server = serve(monkeypatch, folder, manifest, tmp_path / 'cache')
  yield server, model
  server.stop()


def torchvision_detections(model, image: np.ndarray) -> dict:
  with torch.no_grad():
    out, = model([torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255])
  return {'boxes': out['boxes'].numpy(), 'scores': out['scores'].numpy(),
          'classes': out['labels'].numpy()}


def test_from_pretrained_downloads_once_then_works_offline(mirror, tmp_path):
  server, model = mirror
  image = synthetic.sample_photos()[2]
  det = detector.Detector.from_pretrained(NAME)
  first = det.detect([image])[0]
  theirs = torchvision_detections(model, image)
  assert len(first['scores']) == len(theirs['scores']) > 0
  ids = np.asarray(det.config.data.category_ids)  # model classes -> COCO ids, as torchvision's
  assert not detections.unmatched({**first, 'classes': ids[first['classes'] - 1]}, theirs,
                                  score_tol=1e-4, box_tol=0.1)
  cached = tmp_path / 'cache'
  assert sorted(p.name for p in (cached / 'downloads').iterdir()) == [
      pretrained.PUBLISHED[NAME].file]
  assert (cached / NAME / 'config.json').is_file()
  server.stop()  # a second use needs no server
  again = detector.Detector.from_pretrained(NAME).detect([image])[0]
  np.testing.assert_array_equal(again['boxes'], first['boxes'])


def test_a_wrong_checksum_keeps_nothing(served, tmp_path, monkeypatch):
  folder, _, _ = served
  manifest = tmp_path / 'manifest.json'
  manifest.write_text(json.dumps({NAME: {'file': pretrained.PUBLISHED[NAME].file,
                                         'sha256': '0' * 64}}))
  server = serve(monkeypatch, folder, manifest, tmp_path / 'cache')
  try:
    with pytest.raises(pretrained.DownloadError, match='is not the published file: its SHA-256'):
      pretrained.converted(NAME)
  finally:
    server.stop()
  assert list((tmp_path / 'cache' / 'downloads').iterdir()) == []
  assert not (tmp_path / 'cache' / NAME).exists()


def test_an_interrupted_download_keeps_nothing(served, tmp_path, monkeypatch):
  folder, _, manifest = served
  server = serve(monkeypatch, folder, manifest, tmp_path / 'cache', cut=True)
  try:
    with pytest.raises(pretrained.DownloadError, match='failed .*nothing was kept'):
      pretrained.fetch(NAME)
  finally:
    server.stop()
  assert list((tmp_path / 'cache' / 'downloads').iterdir()) == []


def test_unknown_names_are_listed():
  with pytest.raises(ValueError, match='no published weights named .ssd512_coco.') as error:
    pretrained.weights('ssd512_coco')
  listed = str(error.value).split('the names are ')[1].rstrip('.').split(', ')
  assert listed == sorted(pretrained.PUBLISHED)
  assert {'ssd300_vgg16_coco', 'ssdlite320_mobilenet_v3_large_coco', 'vgg16_imagenet',
          'mobilenet_v3_large_imagenet'} <= set(listed)


def test_the_names_are_listed_with_their_format_and_whether_they_are_cached(tmp_path):
  """`python -m ssd_jax.pretrained` as docs/pretrained.md shows it: a row per
  published name of every family, its format, detector or base, and 'cached'
  only for the one converted in $SSD_JAX_CACHE."""
  cache = tmp_path / 'cache'
  (cache / NAME).mkdir(parents=True)
  (cache / NAME / 'conversion.json').write_text('{}')
  (cache / 'vgg16_imagenet.partial-1').mkdir()  # a conversion cut short is not cached
  printed = commands.run(commands.find('python -m ssd_jax.pretrained', 'docs/pretrained.md'),
                         tmp_path / 'user', env={'SSD_JAX_CACHE': str(cache)})
  rows = {line.split()[0]: line.split(None, 4) for line in printed.splitlines()[2:]}
  published = models.published()
  detectors = {n for f in models.families().values() for n, c in f.converters.items() if c.config}
  assert sorted(rows) == sorted(published)
  for name, w in published.items():
    assert rows[name][1:] == [w.format, 'detector' if w.format in detectors else 'base',
                              'cached' if name == NAME else '-', w.about], rows[name]
  wrong = subprocess.run([sys.executable, '-m', 'ssd_jax.pretrained', '--names'],
                         capture_output=True, text=True)
  assert wrong.returncode == 1 and 'takes no arguments (got --names)' in wrong.stderr


def test_the_readme_models_table_names_every_format_and_published_name():
  """The README's models table gives, per source, its converter format and then its
  published name: every format of every family is there, each name beside its format."""
  readme = (commands.ROOT / 'README.md').read_text()
  table = readme.split('## Models', 1)[1].split('\n\n', 2)[1]
  column = ' '.join(row.rstrip(' |').rsplit('|', 1)[1] for row in table.splitlines()[2:])
  pairs = re.findall(r'\(`(\w+)`, `(\w+)`\)', column)
  published = models.published()
  assert sorted(name for _, name in pairs) == sorted(published)
  assert all(published[name].format == fmt for fmt, name in pairs), pairs
  assert set(re.findall(r'\(`(\w+)`', column)) == set(convert.formats())


def test_every_format_and_name_says_what_it_is():
  """Each family's converters and published weights say what they are, and
  `python -m ssd_jax.convert --help` lists each format with its kind and that."""
  text = ' '.join(convert.format_help().split())
  for family in models.families().values():
    for name, c in family.converters.items():
      assert c.about and f'{name} ({"detector" if c.config else "base"}): {c.about}' in text
    assert all(w.about for w in family.published.values()), family.backbone


def test_weights_without_a_published_checksum_are_checked_for_length_and_named(
    tmp_path, monkeypatch, capsys):
  """A publisher that gives no checksum (NVIDIA's): the file is kept, its SHA-256
  printed to pin; a cut transfer is still refused."""
  unpinned = pretrained.Weights('unpinned.pt', None, 'resnet50')
  monkeypatch.setitem(pretrained.PUBLISHED, 'unpinned', unpinned)
  (tmp_path / 'mirror').mkdir()
  (tmp_path / 'mirror' / 'unpinned.pt').write_bytes(bytes(range(256)) * 64)
  digest = hashlib.sha256((tmp_path / 'mirror' / 'unpinned.pt').read_bytes()).hexdigest()
  (tmp_path / 'manifest.json').write_text('{}')
  for cut in (True, False):
    server = serve(monkeypatch, tmp_path / 'mirror', tmp_path / 'manifest.json',
                   tmp_path / 'cache', cut=cut)
    try:
      if cut:
        with pytest.raises(pretrained.DownloadError, match='after 8192 of 16384 bytes'):
          pretrained.fetch('unpinned')
      else:
        path = pretrained.fetch('unpinned')
    finally:
      server.stop()
  assert hashlib.sha256(open(path, 'rb').read()).hexdigest() == digest
  assert f'its publisher gives no checksum; its SHA-256 is {digest}' in capsys.readouterr().err


def test_fine_tune_from_a_name_then_predict_by_name_on_the_command_line(mirror, tmp_path):
  """voc_ssdlite320 with --config.model.init_from=NAME (every layer but the class
  heads) on an empty cache downloads and converts the weights; with the server
  stopped, --mode=predict --pretrained=NAME reuses them and gives torchvision's
  detections."""
  server, model = mirror
  folder = commands.scratch(tmp_path / 'user')
  env = commands.ONE_DEVICE
  commands.run(
      commands.find('--config.model.init_from=ssdlite320_mobilenet_v3_large_coco'), folder,
      ['--config.train.num_steps=1', '--config.train.batch_size=2',
       '--config.train.checkpoint_every=1'] + synthetic.squares_folder_overrides(folder), env)
  assert [p.name for p in (tmp_path / 'cache' / 'downloads').iterdir()] == [
      pretrained.PUBLISHED[NAME].file]
  server.stop()  # a second use needs no server
  (folder / 'photos').mkdir()
  from PIL import Image
  Image.fromarray(synthetic.sample_photos()[2]).save(folder / 'photos' / 'a.png')
  commands.run(commands.find('--pretrained=ssdlite320_mobilenet_v3_large_coco'), folder, env=env)
  found = json.loads((folder / 'predictions' / 'detections.json').read_text())
  ours = detections.from_coco_results(found, 'a.png')
  theirs = torchvision_detections(model, synthetic.sample_photos()[2])
  assert not detections.unmatched(ours, theirs, score_tol=1e-4, box_tol=0.1)
  from ssd_jax import checkpoints, workdirs
  workdir = str(folder / 'voc_ssdlite')
  variables, _ = checkpoints.restore_variables(Task.of(workdirs.find_config(workdir)), workdir)
  reference, _ = checkpoints.restore_variables(
      Task.of(workdirs.find_config(pretrained.converted(NAME))), pretrained.converted(NAME))
  def first_kernel(tree):
    return next(np.asarray(x) for x in jax.tree.leaves(tree['params']['backbone']['features_0'])
                if np.ndim(x) == 4)

  # One step at the warmup's first rate moves it a little; a fresh one is uncorrelated.
  ours, theirs = first_kernel(variables), first_kernel(reference)
  assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999
