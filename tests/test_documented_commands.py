"""Every documented command, run as a user types it (ssd_jax.testing.commands):
the README's ```bash blocks and its Python block, and the commands in the
docstrings of each config file and of ssd_jax.main, convert, export and summary.

Only sizes are shrunk, by `--config.*` overrides appended to the command
(fewer steps, a narrower model, the `small` shapes split, a tiny folder of
images). Each subprocess sees one CPU device, as a user's machine would, and
compiles with LLVM's cheap passes. test_every_documented_command_is_run_by_a_test
fails when a document shows a command that no test here runs and that is not
listed in NOT_RUN with the reason.
"""
from __future__ import annotations

import json
import pathlib
import re
import shlex
import shutil
import socket

import jax
import numpy as np
import pytest
from PIL import Image

from ssd_jax import detector, images, lowering, workdirs
from ssd_jax import tflite as tflite_lib
from ssd_jax.testing import commands, detections, synthetic
from ssd_jax.task import Task

ROOT = commands.ROOT
ONE_DEVICE = commands.ONE_DEVICE
# The quickstart, shrunk: the small shapes split (64 train / 16 test images), 40 steps.
SHAPES_SMALL = ['--config.data.train_splits=("ssd_shapes/small:train",)',
                '--config.data.eval_split=ssd_shapes/small:test',
                '--config.train.num_steps=40', '--config.train.batch_size=8',
                '--config.optim.warmup_steps=5', '--config.optim.boundaries=(30,35)',
                '--config.train.checkpoint_every=20', '--config.train.log_every=10',
                '--config.eval.num_rendered=2']
# voc300's model at an eighth of its width, two steps of batch 1.
VOC300_TINY = ['--config.model.width=0.125', '--config.train.num_steps=2',
               '--config.train.batch_size=1', '--config.train.checkpoint_every=2',
               '--config.train.log_every=1', '--config.eval.num_rendered=1']
# Documented commands no test runs, and why.
NOT_RUN = {
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]" && .venv/bin/python -m '
    'pytest -n auto tests': 'the test command itself: .ci/run runs it verbatim (checked below)',
    "tfds.builder('voc/2007', file_format='array_record').download_and_prepare()":
        'downloads PASCAL VOC; tests have no network (the same TFDS call prepares ssd_shapes '
        'in the quickstart test)',
    'pip install -e ".[convert]"': 'an install; the test command installs the same packages '
                                   '(".[test]" includes "convert")',
    # docs/*.md
    "tfds.builder('voc/2012', file_format='array_record')": 'downloads PASCAL VOC 2012 (as '
                                                            'voc/2007 above)',
    '--config.data.root=/path/to/': 'a placeholder for the user\'s folder; the same formats '
                                    'are read by the own-data command below and by '
                                    'tests/test_custom_layouts.py',
    '--mode=train_and_eval --config=configs/voc300.py --workdir=/tmp/voc300': (
        'trains on PASCAL VOC, which tests cannot download; the quickstart runs '
        '--mode=train_and_eval, and voc300 trains on a small folder below'),
    'gcloud compute tpus tpu-vm ssh': 'needs a Cloud TPU; several hosts are tested as processes '
                                      'on 127.0.0.1 (run_two_hosts below, test_multihost.py)',
    'srun --nodes=4': 'needs a Slurm cluster (as above)',
    'JAX_COORDINATOR_ADDRESS=10.0.0.1:8476': 'the two-host command of the docs on VOC; run '
                                             'on 127.0.0.1 and the shapes data below',
    'tensorboard --logdir': "TensorBoard's own command; the metric files it reads are "
                            'checked in test_loop.py',
}


def mean_ap(output: str) -> str:
  """The mAP line of a printed evaluation table."""
  return re.search(r'^mAP .*$', output, re.M).group(0)


OWN_FILES = {p.name for p in pathlib.Path(detector.__file__).parent.rglob('*.py')}


def library_info_lines(output: str) -> list[str]:
  """The files outside ssd_jax that wrote info lines through Python's absl logging
  (I<MMDD> <HH:MM:SS.micros> <thread> <file>:<line>] ...; TensorFlow's C++ lines,
  I0000 00:00:<seconds>, are beyond its reach)."""
  found = re.findall(r'^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ (\S+?):\d+\] .*$', output, re.M)
  return [name for name in found if name not in OWN_FILES]


def write_photos(folder: pathlib.Path, names=('street', 'cat')) -> list[np.ndarray]:
  """scikit-image photos as folder/<name>.jpg, at most 320 px wide; their pixels as read."""
  folder.mkdir(parents=True, exist_ok=True)
  out = []
  for name, photo in zip(names, synthetic.sample_photos()[2:]):
    image = Image.fromarray(photo)
    image.thumbnail((320, 320))
    image.save(folder / f'{name}.jpg', quality=92)
    out.append(images.read_image(str(folder / f'{name}.jpg')))
  return out


# --- the quickstart's workdir: train, eval, predict, export, the Python API ---------

@pytest.fixture(scope='module')
def user(tmp_path_factory):
  """The user's folder with photos/, and the environment of a fresh machine: an
  empty TFDS data dir given through TFDS_DATA_DIR."""
  folder = commands.scratch(tmp_path_factory.mktemp('user'))
  write_photos(folder / 'photos')
  return folder, {**ONE_DEVICE, 'TFDS_DATA_DIR': str(folder / 'tensorflow_datasets')}


@pytest.fixture(scope='module')
def quickstart(user):
  folder, env = user
  command = commands.find('--config=configs/shapes.py --workdir=/tmp/ssd_shapes --mode=')
  return commands.run(command, folder, SHAPES_SMALL, env)


@pytest.mark.xdist_group('quickstart_commands')
def test_quickstart_then_eval_without_config_gives_the_same_map(user, quickstart):
  folder, env = user
  assert 'generating ssd_shapes/small' in quickstart  # a fresh data dir: made here, once
  assert (folder / 'ssd_shapes' / 'detections').is_dir()
  evaluated = commands.run(commands.find('--mode=eval --workdir=/tmp/ssd_shapes'), folder,
                           env=env)
  assert 'evaluation at step 40' in evaluated
  assert mean_ap(evaluated) == mean_ap(quickstart)  # the same checkpoint, the same split
  assert (folder / 'ssd_shapes' / 'eval_40' / 'metrics.json').is_file()


@pytest.mark.xdist_group('quickstart_commands')
def test_the_console_shows_ssd_jax_info_lines_and_not_the_libraries(user, quickstart):
  assert re.search(r'^I\d{4} .* workflows.py:\d+\] config:$', quickstart, re.M)
  assert not library_info_lines(quickstart), library_info_lines(quickstart)[:5]


@pytest.mark.xdist_group('quickstart_commands')
def test_predict_without_config_writes_the_detectors_detections(user, quickstart):
  folder, env = user
  printed = commands.run(commands.find('--mode=predict --workdir=/tmp/ssd_shapes'), folder,
                         env=env)
  out = folder / 'ssd_shapes_predictions'
  assert f'2 images: detections in {out / "detections.json"}' in printed
  found = json.loads((out / 'detections.json').read_text())
  det = detector.Detector.from_checkpoint(str(folder / 'ssd_shapes'))
  for name in ('street.jpg', 'cat.jpg'):
    assert (out / 'images' / name).is_file()
    ours = detections.from_coco_results(found, name)
    expected = det.detect([images.read_image(str(folder / 'photos' / name))])[0]
    assert len(expected['scores']) > 0
    assert not detections.unmatched(ours, expected, score_tol=1e-4, box_tol=0.02)


@pytest.fixture(scope='module')
def exported(user, quickstart):
  """Runs the README's five export commands on the quickstart's workdir."""
  folder, env = user
  for command in (commands.find('--workdir=/tmp/ssd_shapes --format=saved_model'),
                  commands.find('--workdir=/tmp/ssd_shapes --format=tflite --output'),
                  commands.find('--workdir=/tmp/ssd_shapes --format=tflite --quantize=full_int8'),
                  commands.find('--workdir=/tmp/ssd_shapes --format=onnx'),
                  commands.find('--workdir=/tmp/ssd_shapes --format=jax')):
    printed = commands.run(command, folder, env=env)
    assert 'wrote ' in printed and not library_info_lines(printed)
    assert 'tf.lite.Interpreter is deprecated' not in printed  # a warning the user can't act on
  return folder / 'ssd_shapes_export'


def first(outputs: dict) -> dict:
  """An artifact's outputs for a batch of one -> its num_detections detections."""
  n = int(np.asarray(outputs['num_detections'])[0])
  return {k: np.asarray(outputs[k])[0][:n] for k in ('boxes', 'scores', 'classes')}


@pytest.mark.xdist_group('quickstart_commands')
@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
def test_each_exported_artifact_loads_and_gives_the_detectors_detections(user, exported):
  import tensorflow as tf
  folder, _ = user
  photo = images.read_image(str(folder / 'photos' / 'street.jpg'))
  expected = detector.Detector.from_checkpoint(str(folder / 'ssd_shapes')).detect([photo])[0]
  assert len(expected['scores']) > 0
  saved = tf.saved_model.load(str(exported / 'saved_model'))
  tflite = tf.lite.Interpreter(model_path=str(exported / 'tflite' / 'detector.tflite'))
  found = {
      'saved_model': first(saved.signatures['serving_default'](images=tf.constant(photo[None]))),
      'tflite': first(tflite.get_signature_runner('serving_default')(images=photo[None])),
      'jax': detector.Detector.from_exported(str(exported / 'jax')).detect([photo])[0],
      'onnx': detector.Detector.from_exported(str(exported / 'onnx')).detect([photo])[0],
  }
  run = str(folder / 'ssd_shapes')
  by_op_rules = detector.Detector.from_checkpoint(  # TFLite's post-process op: see tflite.py
      run, config=tflite_lib.with_op_rules(workdirs.find_config(run))).detect([photo])[0]
  h, w = photo.shape[:2]  # the artifact clips its outputs as the config says
  by_op_rules['boxes'] = np.clip(by_op_rules['boxes'], 0, np.array([w, h, w, h], np.float32))
  for fmt, ours in found.items():
    theirs = by_op_rules if fmt == 'tflite' else expected
    assert not detections.unmatched(ours, theirs, score_tol=1e-3, box_tol=0.5), fmt
  ours = detector.Detector.from_exported(str(exported / 'tflite_full_int8')).detect([photo])[0]
  assert len(ours['scores']) and set(ours['classes'].tolist()) <= {1, 2, 3, 4}
  accuracy = {fmt: json.loads((exported / fmt / 'export.json').read_text())['accuracy']
              for fmt in ('saved_model', 'tflite', 'tflite_full_int8', 'onnx', 'jax')}
  for fmt, a in accuracy.items():  # each scored at export, on the whole (shrunk) test split
    assert a['metric'] == 'mAP' and a['images'] == 16 and 0 <= a['artifact'] <= 1
    if fmt in ('saved_model', 'onnx', 'jax'):  # ssd_jax's own post-processing rules
      assert a['artifact'] == pytest.approx(a['checkpoint'], abs=1e-6), fmt


def run_block(block: str, replace: dict, names: dict) -> dict:
  """Executes a documented Python block as written (its paths replaced) with `names`
  defined (those it leaves to the reader); the names it defines."""
  for old, new in replace.items():
    assert old in block, (old, block)
    block = block.replace(old, new)
  space = dict(names)
  exec(compile(block, '<docs block>', 'exec'), space)  # noqa: S102
  return space


@pytest.mark.xdist_group('quickstart_commands')
@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
def test_the_docs_loading_blocks_run_as_written(user, exported):
  """docs/export.md's blocks that load each artifact, and docs/evaluation.md's
  Detector block, run as written on the quickstart's run and exports, a photo
  standing for the image names they leave to the reader: each gives what its
  text says (ONNX's outputs in the order the block unpacks them)."""
  folder, _ = user
  photo_file = str(folder / 'photos' / 'street.jpg')
  photo = images.read_image(photo_file)
  given = {'image_u8': photo, 'batch_u8': photo[None], 'images': [photo]}
  moved = {'/tmp/voc300_export/': f'{exported}/'}
  saved, tflite, onnx, jax_ = [run_block(b, moved, given) for b in commands.fenced_blocks(
      (ROOT / 'docs' / 'export.md').read_text(), 'python')]
  expected = first(saved['out'])
  assert len(expected['scores']) > 0
  names = [n.decode() for n in np.asarray(saved['names'])]
  assert names == json.loads((exported / 'saved_model' / 'export.json').read_text())['class_names']
  assert sorted(tflite['out']) == sorted(lowering.OUTPUTS) == sorted(saved['out'])
  d = len(np.asarray(saved['out']['scores'])[0])
  boxes, scores, classes, num = (onnx[k] for k in ('boxes', 'scores', 'classes', 'num'))
  assert (boxes.shape, scores.shape, classes.shape, num.shape) == ((1, d, 4), (1, d), (1, d), (1,))
  assert scores.dtype == np.float32 and classes.dtype == num.dtype == np.int32
  by_onnx = first(dict(boxes=boxes, scores=scores, classes=classes, num_detections=num))
  assert not detections.unmatched(by_onnx, expected, score_tol=1e-3, box_tol=0.5)
  assert not detections.unmatched(jax_['found'][0], expected, score_tol=1e-3, box_tol=0.5)
  assert not detections.unmatched(first(jax_['out']), expected, score_tol=1e-3, box_tol=0.5)
  block, = commands.fenced_blocks((ROOT / 'docs' / 'evaluation.md').read_text(), 'python')
  found = run_block(block, {"'/tmp/voc300'": repr(str(folder / 'ssd_shapes')),
                            "'photo.jpg'": repr(photo_file)}, {})['found']
  assert not detections.unmatched(found, expected, score_tol=1e-3, box_tol=0.5)
  assert list(found['names']) == [names[c - 1] for c in found['classes']]


@pytest.mark.xdist_group('quickstart_commands')
def test_the_readme_python_block_runs_as_written(user, exported):
  folder, env = user
  block, = commands.fenced_blocks(commands.README.read_text(), 'python')
  commands.run(f"python -c {shlex.quote(block.replace('/tmp/', f'{folder}/'))}", folder,
               env=env)
  drawn = Image.open(folder / 'street_detections.jpg')
  assert drawn.size == Image.open(folder / 'photos' / 'street.jpg').size


# --- training commands on other data ------------------------------------------------

def my_data(root: pathlib.Path, class_names=('cat', 'dog')) -> pathlib.Path:
  """Photos with VOC XML files and no split lists (JPEGImages/ and Annotations/)."""
  synthetic.photo_voc_folder(root, 12, size=(160, 120), class_names=class_names)
  shutil.rmtree(root / 'ImageSets')
  return root


def test_your_own_data_command_trains_evaluates_and_records_its_split(tmp_path):
  folder = commands.scratch(tmp_path)
  my_data(folder / 'my_data')
  printed = commands.run(commands.find('--workdir=/tmp/my_detector'), folder, VOC300_TINY,
                         ONE_DEVICE)
  assert 'evaluation at step 2' in printed and re.search(r'^cat ', printed, re.M)
  split = json.loads((folder / 'my_detector' / 'data_split.json').read_text())
  assert len(split['train']) + len(split['val']) == 12 and split['val']


def test_coins_commands_write_a_yolo_dataset_and_train_on_it(tmp_path):
  """experiments/coins_yolo.py's two commands as typed, the training shrunk to two
  steps: the YOLO folder it writes trains and evaluates, its class named by data.yaml."""
  folder = commands.scratch(tmp_path)
  made = commands.run(commands.find('python experiments/coins_yolo.py --out=/tmp/coins',
                                    'experiments/coins_yolo.py'), folder)
  assert '400 train and 60 val images' in made
  assert len(list((folder / 'coins' / 'labels' / 'val').iterdir())) == 60
  shrink = ['--config.train.num_steps=2', '--config.optim.boundaries=(1,2)',
            '--config.optim.warmup_steps=1', '--config.train.batch_size=8',
            '--config.train.checkpoint_every=2', '--config.train.log_every=1',
            '--config.eval.num_rendered=1']
  printed = commands.run(commands.find('--workdir=/tmp/coins_run', 'experiments/coins_yolo.py'),
                         folder, shrink, ONE_DEVICE)
  assert 'evaluation at step 2' in printed and re.search(r'^coin ', printed, re.M)
  assert json.loads((folder / 'coins_run' / 'config.json').read_text())['model']['num_classes'] == 2


def test_voc300_train_eval_predict_export_and_summary_commands(tmp_path):
  """README's and main.py's voc300 training command on a small folder, then
  main.py's eval and predict (no --config), export.py's three exports and
  summary.py's table."""
  folder = commands.scratch(tmp_path)
  write_photos(folder / 'photos')
  train = commands.find('python -m ssd_jax.main --config=configs/voc300.py --workdir=/tmp/voc300')
  assert train == commands.find(train, 'ssd_jax/main.py')
  commands.run(train, folder, VOC300_TINY + synthetic.squares_folder_overrides(folder), ONE_DEVICE)
  saved = json.loads((folder / 'voc300' / 'config.json').read_text())
  assert saved['model']['num_classes'] == 3 and saved['model']['width'] == 0.125
  evaluated = commands.run(commands.find('--mode=eval --workdir=/tmp/voc300', 'ssd_jax/main.py'),
                           folder, env=ONE_DEVICE)
  assert 'evaluation at step 2' in evaluated and re.search(r'^red ', evaluated, re.M)
  commands.run(commands.find('--mode=predict --workdir=/tmp/voc300', 'ssd_jax/main.py'), folder,
               env=ONE_DEVICE)
  assert len(json.loads((folder / 'voc300_predictions' / 'detections.json').read_text()))
  for command in (commands.find('--format=saved_model', 'ssd_jax/export.py'),
                  commands.find('--format=tflite --quantize=full_int8', 'ssd_jax/export.py'),
                  commands.find('--format=onnx', 'ssd_jax/export.py'),
                  commands.find('--format=jax', 'ssd_jax/export.py')):
    commands.run(command, folder, env=ONE_DEVICE)
  exported = json.loads((folder / 'voc300_export' / 'jax' / 'export.json').read_text())
  assert exported['class_names'] == ['red', 'green']
  assert (folder / 'voc300_export' / 'tflite_full_int8' / 'detector.tflite').is_file()
  onnx_info = json.loads((folder / 'voc300_export' / 'onnx' / 'export.json').read_text())
  assert onnx_info['accuracy']['artifact'] == pytest.approx(  # ONNX keeps ssd_jax's rules
      onnx_info['accuracy']['checkpoint'], abs=1e-3)
  table = commands.run(commands.find('python -m ssd_jax.summary --config=configs/voc300.py',
                                     'ssd_jax/summary.py'), folder, env=ONE_DEVICE)
  assert '8732' in table


# --- each config file's run command ---------------------------------------------------

CONFIG_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*.py'))


def config_training_commands() -> list[tuple[str, str]]:
  """(config file, command) of every training command the configs' docstrings
  show without a converted checkpoint (those run in the converter tests)."""
  return [(path, c) for path in CONFIG_FILES for c in commands.documented(path)
          if c.startswith(f'python -m ssd_jax.main --config={path} ') and 'init_checkpoint' not in c]


# Configs whose tests train SSDLite320 through the same step (under the squares
# overrides COCO's and VOC's configs compile to one program), marked
# xdist_group('ssdlite_steps'): run one after the other on one worker, the second
# finds the first's step in JAX's compilation cache instead of compiling it (about
# 14 CPU-seconds) at the same time.
SSDLITE_STEPS = ('configs/coco_ssdlite320.py', 'configs/voc_ssdlite320.py')


def config_test_params() -> list:
  """pytest params (path, command) of config_training_commands that no README
  command covers, the SSDLITE_STEPS configs' marked."""
  group = pytest.mark.xdist_group('ssdlite_steps')
  return [pytest.param(path, command, marks=[group] if path in SSDLITE_STEPS else [])
          for path, command in config_training_commands()
          if command not in commands.documented('README.md')]


@pytest.mark.parametrize('path, command', config_test_params(),
                         ids=lambda x: pathlib.Path(x).stem if x.endswith('.py') else '')
def test_config_run_command(path, command, tmp_path):
  """Each config's documented command, as typed, at an eighth of its width for
  two steps on a small folder (shapes.py's and voc300.py's are README commands,
  run above)."""
  folder = commands.scratch(tmp_path)
  printed = commands.run(command, folder,
                         VOC300_TINY + synthetic.squares_folder_overrides(folder), ONE_DEVICE)
  workdir = folder / re.search(r'--workdir=/tmp/(\S+)', command).group(1)
  assert (workdir / 'checkpoints' / '2').is_dir(), printed[-2000:]
  if '--mode=train_and_eval' in command:
    assert 'evaluation at step 2' in printed


# --- pretrained weights: convert, then predict or train ------------------------------

def torchvision_model(kind: str, path: pathlib.Path):
  """A seeded torchvision model of `kind`, its state dict saved at `path`; the model, in
  eval mode."""
  import torch
  import torchvision
  torch.manual_seed(0)
  model = {'ssd300': lambda: torchvision.models.detection.ssd300_vgg16(
               weights=None, weights_backbone=None),
           'ssdlite': lambda: torchvision.models.detection.ssdlite320_mobilenet_v3_large(
               weights=None, weights_backbone=None, num_classes=91),
           'vgg16': lambda: torchvision.models.vgg16(weights=None),
           'mobilenet_v3_large': lambda: torchvision.models.mobilenet_v3_large(weights=None),
           }[kind]()
  torch.save(model.state_dict(), path)
  return model.eval()


def assert_predicts_like_torchvision(convert: str, predict: str, kind: str, weights: str,
                                     workdir: str, folder: pathlib.Path):
  """Runs the convert command, then predict on photos/ without --config; the
  detections JSON matches torchvision's own detector on the same pixels."""
  import torch
  photos = write_photos(folder / 'photos')
  model = torchvision_model(kind, folder / weights)
  assert f'use it with --mode=eval/predict --workdir={folder / workdir}' in commands.run(
      convert, folder, env=ONE_DEVICE)
  commands.run(predict, folder, env=ONE_DEVICE)
  found = json.loads((folder / workdir / 'predictions' / 'detections.json').read_text())
  with torch.no_grad():
    expected = model([torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255 for p in photos])
  for name, theirs in zip(('cat.jpg', 'street.jpg'), expected[::-1], strict=True):
    theirs = {'boxes': theirs['boxes'].numpy(), 'scores': theirs['scores'].numpy(),
              'classes': theirs['labels'].numpy()}
    ours = detections.from_coco_results(found, name)
    assert len(ours['scores']) == len(theirs['scores']) > 0
    assert not detections.unmatched(ours, theirs, score_tol=1e-4, box_tol=0.1)


def test_converted_torchvision_ssd300_predicts_without_config(tmp_path):
  assert_predicts_like_torchvision(
      commands.find('--format=torchvision_ssd300 '),
      commands.find('--mode=predict --workdir=/tmp/tv_ssd300'), 'ssd300',
      'ssd300_vgg16_coco-b556d3b4.pth', 'tv_ssd300', commands.scratch(tmp_path))


def test_converted_torchvision_ssdlite_predicts_without_config(tmp_path):
  assert_predicts_like_torchvision(
      commands.find('--format=torchvision_ssdlite320 '),
      commands.find('--mode=predict --workdir=/tmp/tv_ssdlite'), 'ssdlite',
      'ssdlite320_mobilenet_v3_large_coco-a79551df.pth', 'tv_ssdlite',
      commands.scratch(tmp_path))


def test_reduced_vgg_conversion_command(tmp_path):
  """convert.py's reduced_vgg command on a state dict of the `vgg16_reducedfc.pth`
  layout ('0.weight' ... '33.bias', conv6 and conv7 already reduced)."""
  import torch
  folder = commands.scratch(tmp_path)
  torch.manual_seed(0)
  convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
  index = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  state = {}
  for i, (c_in, c_out) in zip(index, convs):
    state[f'{i}.weight'], state[f'{i}.bias'] = torch.randn(c_out, c_in, 3, 3) * 0.05, torch.zeros(c_out)
  state['31.weight'], state['31.bias'] = torch.randn(1024, 512, 3, 3) * 0.02, torch.zeros(1024)
  state['33.weight'], state['33.bias'] = torch.randn(1024, 1024, 1, 1) * 0.02, torch.zeros(1024)
  torch.save(state, folder / 'vgg16_reducedfc.pth')
  printed = commands.run(commands.find('--format=reduced_vgg', 'ssd_jax/convert.py'), folder,
                         env=ONE_DEVICE)
  assert f'--config.model.init_checkpoint={folder / "reduced_vgg"}' in printed
  info = json.loads((folder / 'reduced_vgg' / 'conversion.json').read_text())
  assert info['format'] == 'reduced_vgg' and info['channel_order'] == 'bgr'


def test_converted_mobilenet_initialises_ssdlite_training(tmp_path):
  """coco_ssdlite320.py's two commands: the ImageNet MobileNetV3 conversion, then
  SSDLite320 (full tail) from it, one step of batch 2 on a small folder."""
  folder = commands.scratch(tmp_path)
  net = torchvision_model('mobilenet_v3_large', folder / 'mobilenet_v3_large-8738ca79.pth')
  commands.run(commands.find('--format=mobilenet_v3_large', 'configs/coco_ssdlite320.py'),
               folder, env=ONE_DEVICE)
  shrink = ['--config.train.num_steps=1', '--config.train.batch_size=2',
            '--config.train.checkpoint_every=1', '--config.train.log_every=1']
  commands.run(commands.find('--config.model.init_checkpoint=/tmp/mobilenet_v3',
                             'configs/coco_ssdlite320.py'),
               folder, shrink + synthetic.squares_folder_overrides(folder), ONE_DEVICE)
  from ssd_jax import checkpoints, workdirs
  workdir = str(folder / 'coco_ssdlite')
  variables, _ = checkpoints.restore_variables(Task.of(workdirs.find_config(workdir)), workdir)
  kernel, = [np.asarray(x) for x in jax.tree.leaves(variables['params']['backbone']['features_0'])
             if np.ndim(x) == 4]
  theirs = net.features[0][0].weight.detach().numpy().transpose(2, 3, 1, 0)
  # One step at the warmup's first rate moves it a little; a fresh one is uncorrelated.
  assert np.corrcoef(kernel.ravel(), theirs.ravel())[0, 1] > 0.999


def test_converted_vgg16_initialises_voc300_training(tmp_path):
  """The vgg16 conversion, then voc300 from it (full width: the converted base
  must fit), one step of batch 2 on a small folder: conv1_1 starts as converted."""
  folder = commands.scratch(tmp_path)
  vgg = torchvision_model('vgg16', folder / 'vgg16-397923af.pth')
  commands.run(commands.find('--format=vgg16 '), folder, env=ONE_DEVICE)
  shrink = ['--config.train.num_steps=1', '--config.train.batch_size=2',
            '--config.train.checkpoint_every=1', '--config.train.log_every=1']
  printed = commands.run(commands.find('--config.model.init_checkpoint=/tmp/vgg16'), folder,
                         shrink + synthetic.squares_folder_overrides(folder), ONE_DEVICE)
  assert 'training the VGG16 base from scratch' not in printed
  from ssd_jax import checkpoints, workdirs
  workdir = str(folder / 'voc300')
  params, _ = checkpoints.restore_variables(Task.of(workdirs.find_config(workdir)), workdir)
  conv3_3 = np.asarray(params['params']['backbone']['conv3_3']['kernel'])
  theirs = vgg.features[14].weight.detach().numpy().transpose(2, 3, 1, 0)
  # One SGD step (lr 1e-3) moves it a little; a fresh initialisation would be uncorrelated.
  assert np.corrcoef(conv3_3.ravel(), theirs.ravel())[0, 1] > 0.999
  assert np.median(np.abs(conv3_3 - theirs)) < 1e-3 * np.abs(theirs).max()


# --- several hosts: two processes on this machine, a fresh shared data dir ----------

def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_hosts(folder: pathlib.Path, data_dir: pathlib.Path, shrink: list):
  """The README's two host commands at once, on a free port, with TFDS_DATA_DIR
  = data_dir: (exit codes, logs)."""
  env = {**ONE_DEVICE, 'TFDS_DATA_DIR': str(data_dir)}
  port = {'127.0.0.1:8476': f'127.0.0.1:{free_port()}'}
  hosts = [commands.start(command, folder, folder / f'host{i}.log', shrink, env, port)
           for i, command in enumerate((commands.find('JAX_PROCESS_ID=0 '),
                                        commands.find('JAX_PROCESS_ID=1 ')))]
  try:
    codes = [h.wait(timeout=300) for h in hosts]
  finally:
    for h in hosts:
      if h.poll() is None:
        h.kill()
  return codes, [(folder / f'host{i}.log').read_text() for i in (0, 1)]


@pytest.mark.xdist_group('hosts')
def test_two_hosts_on_a_fresh_data_dir_prepare_it_once_and_train(tmp_path):
  folder = commands.scratch(tmp_path)
  shrink = [a for a in SHAPES_SMALL if 'eval.' not in a] + ['--config.train.num_steps=8']
  codes, logs = run_two_hosts(folder, folder / 'tensorflow_datasets', shrink)
  assert codes == [0, 0], '\n'.join(log[-3000:] for log in logs)
  assert sum(log.count('generating ssd_shapes/small') for log in logs) == 1
  assert 'generating ssd_shapes/small' in logs[0]  # host 0 made it
  assert (folder / 'ssd_shapes_2hosts' / 'checkpoints' / '8').is_dir()


@pytest.mark.xdist_group('hosts')
def test_two_hosts_both_name_a_failed_preparation(tmp_path):
  """The same command with TFDS_DATA_DIR naming a file: host 0's preparation
  fails, and each host's error names the dataset, the folder and the cause."""
  folder = commands.scratch(tmp_path)
  (folder / 'not_a_folder').write_text('')
  codes, logs = run_two_hosts(folder, folder / 'not_a_folder', SHAPES_SMALL)
  assert codes == [1, 1], '\n'.join(log[-3000:] for log in logs)
  failed = (f'preparing the dataset ssd_shapes/small in {folder / "not_a_folder"} failed: '
            f'FileExistsError')
  assert all(failed in log for log in logs), '\n'.join(log[-3000:] for log in logs)
  assert ('preparing the data and weights failed on 1 of 2 hosts (host 0: PreparationFailed'
          in logs[1])


# --- nothing documented goes untested --------------------------------------------------

MODULES = sorted(str(p.relative_to(ROOT)) for folder in ('ssd_jax', 'experiments')
                 for p in (ROOT / folder).rglob('*.py'))
DOC_SOURCES = ['README.md', *sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'docs').glob('*.md')),
               *[m for m in MODULES if commands.documented(m)], *CONFIG_FILES]
NOT_RUN.update({
    '--mode=eval --workdir=/tmp/tv_ssd300': 'evaluates on COCO val2017, which tests cannot '
                                            'download (predict on the same workdir runs)',
    '--mode=eval --workdir=/tmp/tv_ssdlite': 'evaluates on COCO val2017 (predict runs)',
    # experiments/device_report.py
    'pip download --no-deps --only-binary=:all: -d .whl': (
        'downloads wheels from PyPI for the GPU machine; tests have no network'),
    'pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl': (
        "installs those wheels there; test_device_report.py runs the report's tiny mode "
        'where TensorFlow cannot be imported'),
})


def is_synopsis(command: str) -> bool:
  """A usage line (`[--flag N]` options, `ARGS...`), not a command to type as is."""
  return ' [' in command


def test_every_documented_command_is_run_by_a_test():
  """A command of README.md's ```bash blocks or of a DOC_SOURCES docstring must be
  found by a commands.find call of some test (the text it finds, in one string
  literal, and the source), be the same as a README command, be a config's
  training command (test_config_run_command), or be in NOT_RUN with the reason.
  Every module of ssd_jax/ and experiments/ whose docstring shows a command is a
  source; a usage synopsis is not a command (each script's tests run it)."""
  tests = ''.join(p.read_text() for p in (ROOT / 'tests').glob('test_*.py'))
  calls = re.findall(r"commands\.find\(\s*'([^']*)'(?:,\s*'([^']*)')?\)", tests)
  covered = {commands.find(piece, source or 'README.md') for piece, source in calls}
  covered |= {c for _, c in config_training_commands()}
  missing = []
  for source in DOC_SOURCES:
    for command in commands.documented(source):
      if command in covered or is_synopsis(command) or any(p in command for p in NOT_RUN):
        continue
      missing.append(f'{source}: {command}')
  assert not missing, 'documented commands no test runs:\n' + '\n'.join(missing)


def test_ci_runs_the_readme_test_command_verbatim():
  command = commands.find('pytest -n auto tests')
  assert command in (ROOT / '.ci' / 'run').read_text().splitlines()
