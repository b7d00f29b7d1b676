"""Bad inputs and faults, one test each: the message names the file, field or step,
and nothing good is lost (other images used, old checkpoints and config intact,
every prediction written)."""
import asyncio
import json
import logging as py_logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd_jax import checkpoints, detector, images, train_loop, workdirs, workflows
from ssd_jax.data import custom_data, input_pipeline
from ssd_jax.testing import runs, synthetic
from ssd_jax.task import Task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('cat', 'dog')


def squares_config(load_config, root, steps):
  return synthetic.squares_config(load_config('voc300'), str(root), steps)


@pytest.fixture(scope='module')
def squares(tmp_path_factory):
  root = tmp_path_factory.mktemp('squares')
  synthetic.squares_voc_folder(root, 16)
  return root


@pytest.fixture(scope='module')
def trained(tmp_path_factory, squares, load_config):
  """A squares workdir with checkpoints at steps 2 and 4 (copy it before changing it)."""
  workdir = tmp_path_factory.mktemp('trained')
  runs.train(squares_config(load_config, squares, 4), str(workdir))
  return workdir


def snapshot(folder) -> dict:
  """Every file under folder -> its bytes."""
  return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), 'rb').read()
          for d, _, names in os.walk(folder) for n in names}


# --- 1. images of every mode become correct 8-bit RGB -----------------------------

def test_16_bit_palette_cmyk_and_rotated_images_decode_correctly(tmp_path, load_config):
  wide = (np.arange(30 * 40).reshape(30, 40) * 54).astype(np.uint16)  # 0 .. 64746
  Image.fromarray(wide).save(tmp_path / 'wide.png')
  assert Image.open(tmp_path / 'wide.png').mode.startswith('I')
  got = images.read_image(str(tmp_path / 'wide.png'))
  np.testing.assert_array_equal(got[..., 0], np.round(wide / 257.0).astype(np.uint8))
  assert got.min() == 0 and got.max() == round(wide.max() / 257)  # not all white
  indexed = Image.new('P', (8, 6), 1)
  indexed.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)  # colour 1: green
  indexed.save(tmp_path / 'palette.png')
  assert images.read_image(str(tmp_path / 'palette.png'))[0, 0].tolist() == [10, 200, 30]
  Image.new('CMYK', (8, 6), (0, 255, 255, 0)).save(tmp_path / 'cmyk.jpg')
  assert np.all(np.abs(images.read_image(str(tmp_path / 'cmyk.jpg'))[3, 3].astype(int)
                       - [255, 0, 0]) < 8)  # red
  upright = np.zeros((20, 30, 3), np.uint8)
  upright[:, :10] = (250, 0, 0)  # red on the left of the stored pixels
  exif = Image.Exif()
  exif[0x0112] = 6  # the viewer rotates the stored image 90 degrees clockwise
  Image.fromarray(upright).save(tmp_path / 'rotated.jpg', exif=exif, quality=95)
  shown = images.read_image(str(tmp_path / 'rotated.jpg'))
  assert shown.shape == (30, 20, 3) and shown[2, 10, 0] > 200 and shown[-3, 10, 0] < 50
  # The training pipeline reads custom data through the same decoder.
  synthetic.write_voc_folder(tmp_path / 'voc', [('w', Image.new('RGB', (40, 30)), [])])
  shutil.copy(tmp_path / 'wide.png', tmp_path / 'voc' / 'JPEGImages' / 'w.png')
  os.remove(tmp_path / 'voc' / 'JPEGImages' / 'w.jpg')
  c = load_config('voc300')
  c.data.format, c.data.root, c.data.class_names = 'voc_folder', str(tmp_path / 'voc'), CLASSES
  c.model.num_classes, c.data.eval_split = 3, 'trainval'
  example = input_pipeline.open_source(c, 'trainval').example(tf.constant(0, tf.int64))
  np.testing.assert_array_equal(example['image'].numpy(), got)


# --- 2. a failed start leaves the workdir as it was ---------------------------------

def test_resuming_with_another_model_changes_nothing(trained, tmp_path, load_config, squares):
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  before = snapshot(workdir)
  c = squares_config(load_config, squares, 6)
  c.model.width = 0.25
  with pytest.raises(ValueError, match=r'model.width: 0.125 in config.json, 0.25 now'):
    runs.train(c, str(workdir))
  assert snapshot(workdir) == before  # config.json, checkpoints, no lock left behind
  params, step = runs.restore_params(Task.of(workdirs.find_config(str(workdir))), str(workdir))
  assert step == 4


def test_a_start_that_fails_on_its_data_writes_nothing(tmp_path, load_config, squares):
  c = squares_config(load_config, squares, 2)
  c.data.root = str(tmp_path / 'no_such_folder')
  with pytest.raises(FileNotFoundError, match='ImageSets/Main/trainval.txt'):
    runs.train(c, str(tmp_path / 'run'))
  assert os.listdir(tmp_path / 'run') == []  # no config.json, checkpoints/, events or lock


def test_an_eval_split_that_does_not_open_stops_the_run_before_its_first_step(
    tmp_path, load_config, squares):
  c = squares_config(load_config, squares, 2)
  c.data.eval_split = 'tset'  # a typo: the folder has one list, trainval
  with pytest.raises(FileNotFoundError, match='ImageSets/Main/tset.txt'):
    train_loop.train(Task.of(c), str(tmp_path / 'run'), with_eval=True)
  assert os.listdir(tmp_path / 'run') == []  # no step trained, nothing written


# --- 3. predictions of images with the same file name ----------------------------------

def test_predict_keeps_images_whose_names_repeat(tmp_path, load_config):
  task = Task.of(synthetic.tiny_config(load_config('voc300')))
  params = jax.jit(lambda: task.init_variables(jax.random.key(0))['params'])()
  det = detector.Detector(task, params)
  photos = synthetic.sample_photos()
  for i, rel in enumerate(['a/x.jpg', 'b/x.jpg', 'p.jpg', 'p.png']):
    (tmp_path / 'in' / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photos[i][:120, :160]).save(tmp_path / 'in' / rel)
  out = workflows.predict_files(det, str(tmp_path / 'in' / '*' / 'x.jpg'), str(tmp_path / 'o1'))
  assert out['count'] == 2
  ids = {r['image_id'] for r in json.load(open(out['detections']))}
  assert ids == {'a/x.jpg', 'b/x.jpg'}
  assert sorted(os.listdir(tmp_path / 'o1' / 'images')) == ['a', 'b']
  out = workflows.predict_files(det, str(tmp_path / 'in'), str(tmp_path / 'o2'))
  assert {r['image_id'] for r in json.load(open(out['detections']))} == {'p.jpg', 'p.png'}
  assert sorted(os.listdir(tmp_path / 'o2' / 'images')) == ['p.jpg', 'p.png']


# --- 4. ground truth beyond data.max_boxes -------------------------------------------

def test_evaluation_never_cuts_ground_truth(tmp_path, load_config, caplog):
  boxes = [('cat', False, 1 + 2 * k, 1 + (k % 5) * 10, 3 + 2 * k, 9 + (k % 5) * 10)
           for k in range(150)]
  synthetic.write_voc_folder(tmp_path, [('crowd', Image.new('RGB', (320, 60)), boxes)])
  c = load_config('voc300')
  c.data.format, c.data.root, c.data.class_names = 'voc_folder', str(tmp_path), CLASSES
  c.model.num_classes, c.data.eval_split, c.data.train_splits = 3, 'trainval', ('trainval',)
  c.train.batch_size, c.augment.enabled = 1, False
  batch = next(input_pipeline.eval_dataset(c, 0, 1)[0].as_numpy_iterator())
  assert (batch['labels'] > 0).sum() == 150 > c.data.max_boxes
  with caplog.at_level(py_logging.WARNING):
    next(input_pipeline.train_batches(c))
  assert 'crowd.jpg has 150 boxes after augmentation; only data.max_boxes=100' in caplog.text


# --- 5. two runs on one workdir ---------------------------------------------------------

HOLD_LOCK = '''
import sys, time
from ssd_jax import workdirs
with workdirs.workdir_lock(sys.argv[1]):
  print('locked', flush=True)
  time.sleep(600)
'''


def test_a_second_run_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, load_config,
                                                                  squares):
  holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  c = squares_config(load_config, squares, 1)
  with pytest.raises(workdirs.WorkdirInUseError, match=f'in use by process {holder.pid}'):
    runs.train(c, str(tmp_path))
  assert os.listdir(tmp_path) == ['lock']  # nothing written but the holder's lock
  holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel releases the flock
  holder.wait()
  assert int(runs.train(c, str(tmp_path)).step) == 1
  assert not (tmp_path / 'lock').exists()


# --- 6. an unreadable latest checkpoint --------------------------------------------------

def damage(step_dir, how: str) -> None:
  """Truncates every data file of a checkpoint step, or deletes its _METADATA."""
  for d, _, names in os.walk(step_dir):
    for n in names:
      path = os.path.join(d, n)
      if how == 'truncated data' and os.path.basename(d) == 'd':
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 3)
      elif how == 'missing metadata' and n == '_METADATA':
        os.remove(path)


@pytest.mark.parametrize('how', ['truncated data', 'missing metadata'])
def test_an_unreadable_latest_checkpoint_falls_back_to_the_newest_readable(
    trained, tmp_path, load_config, squares, how, caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  step_4 = workdir / 'checkpoints' / '4'
  damage(step_4, how)
  kept = snapshot(step_4)
  if how == 'truncated data':  # evaluation falls back read-only (without _METADATA the
    with caplog.at_level(py_logging.WARNING):  # parameters alone still read fine)
      _, step = runs.restore_params(Task.of(workdirs.find_config(str(workdir))), str(workdir))
    assert step == 2 and 'checkpoint step 4' in caplog.text and step_4.exists()
  with caplog.at_level(py_logging.WARNING):
    state = runs.train(squares_config(load_config, squares, 6), str(workdir))
  assert int(state.step) == 6
  assert 'checkpoint step 4' in caplog.text and 'unreadable' in caplog.text
  moved = list((workdir / checkpoints.UNREADABLE).iterdir())
  assert [p.name.split('_')[0] for p in moved] == ['4'] and snapshot(moved[0]) == kept
  assert sorted(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit())[-1] == 6


def test_no_readable_checkpoint_is_a_clear_error(trained, tmp_path, load_config):
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  for step in ('2', '4'):
    damage(workdir / 'checkpoints' / step, 'truncated data')
  with pytest.raises(RuntimeError, match=r'no readable checkpoint in .*step 4: .*step 2: '):
    runs.restore_params(Task.of(workdirs.find_config(str(workdir))), str(workdir))


FAILED_RESTORE = """
import gc, os, sys, time
import numpy as np
from ssd_jax import checkpoints
folder = sys.argv[1]
rng = np.random.default_rng(0)
tree = {f'w{i}': rng.random((64, 64, 3, 3) if i % 2 else (1000,), np.float32) for i in range(60)}
with checkpoints.ocp.CheckpointManager(os.path.join(folder, 'checkpoints')) as mngr:
  checkpoints.save(mngr, 1, tree)
for d, _, names in os.walk(os.path.join(folder, 'checkpoints', '1')):
  for n in names:
    if os.path.basename(d) == 'd':
      os.truncate(os.path.join(d, n), os.path.getsize(os.path.join(d, n)) // 3)
with checkpoints.ocp.CheckpointManager(os.path.join(folder, 'checkpoints')) as mngr:
  try:
    checkpoints.restore_newest_readable(mngr, tree, folder)
  except checkpoints.NoReadableCheckpointError as e:
    print('refused:', str(e)[:40])
for _ in range(20):
  gc.collect()
  time.sleep(0.01)
"""


def test_a_failed_restore_prints_nothing_after_its_error(tmp_path):
  """orbax closes its event loop when one read fails while others are in flight; their
  late completions must not print 'Exception ignored ... Event loop is closed'."""
  done = subprocess.run([sys.executable, '-c', FAILED_RESTORE, str(tmp_path)],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert 'refused: no readable checkpoint' in done.stdout
  for noise in ('Exception ignored', 'Event loop is closed', 'never retrieved', 'never awaited'):
    assert noise not in done.stderr


def test_only_closed_loop_reports_are_silenced(monkeypatch):
  reports = []
  monkeypatch.setattr(sys, 'unraisablehook', reports.append)
  with warnings.catch_warnings(record=True) as caught:
    checkpoints._quiet_closed_loop_reports()
    for message in ("coroutine 'Store._get_array_metadatas' was never awaited",
                    "coroutine 'other' was never awaited"):
      warnings.warn(message, RuntimeWarning)
  assert [str(w.message) for w in caught] == ["coroutine 'other' was never awaited"]
  closed = asyncio.new_event_loop()
  closed.close()
  try:
    closed.call_soon_threadsafe(print)
  except RuntimeError as e:
    late, other = e, RuntimeError('Event loop is closed')  # the same words, raised elsewhere
  unrelated = ValueError('x')
  for exc in (late, other, unrelated):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc,
                                             exc_traceback=exc.__traceback__, object=None))
  assert [r.exc_value for r in reports] == [other, unrelated]
  logged = []
  handler = py_logging.Handler()
  handler.emit = logged.append
  asyncio_log = py_logging.getLogger('asyncio')
  asyncio_log.addHandler(handler)
  try:
    for error in (ValueError('Error reading ... [tensorstore_spec=...]'), ValueError('y')):
      asyncio_log.error('Future exception was never retrieved\nfuture: <Future>',
                        exc_info=(ValueError, error, None))
  finally:
    asyncio_log.removeHandler(handler)
  assert [str(r.exc_info[1]) for r in logged] == ['y']


# --- 7-11. custom datasets ---------------------------------------------------------------

def test_invalid_annotation_xml_names_the_file_and_line(tmp_path):
  synthetic.write_voc_folder(tmp_path, [('a', Image.new('RGB', (40, 30)), []),
                                        ('b', Image.new('RGB', (40, 30)), [])])
  (tmp_path / 'Annotations' / 'b.xml').write_text('<annotation>\n<size>\n<width>4</size>')
  with pytest.raises(ValueError, match=r'b.xml, line 3, column \d+: not valid XML'):
    custom_data.read_voc_folder(str(tmp_path), 'trainval', CLASSES)


def test_unknown_coco_category_names_the_annotation(tmp_path):
  (tmp_path / 'i.png').write_bytes(b'')
  data = {'images': [{'id': 1, 'file_name': 'i.png', 'width': 10, 'height': 10}],
          'categories': [{'id': 1, 'name': 'cat'}],
          'annotations': [{'id': 33, 'image_id': 1, 'category_id': 7, 'bbox': [0, 0, 5, 5]}]}
  (tmp_path / 'ann.json').write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r'ann.json: annotation 33 has category_id 7, which is '
                     r'not in "categories" \(ids \[1\]\)'):
    custom_data.read_coco_json(str(tmp_path / 'ann.json'), str(tmp_path), None)


def test_png_and_other_formats_in_jpegimages_are_used(tmp_path):
  synthetic.write_voc_folder(tmp_path, [('a', Image.new('RGB', (40, 30), (9, 9, 9)), []),
                                        ('b', Image.new('RGB', (40, 30), (7, 7, 7)), [])])
  for name, fmt in (('a', 'png'), ('b', 'bmp')):
    jpg = tmp_path / 'JPEGImages' / f'{name}.jpg'
    Image.open(jpg).save(tmp_path / 'JPEGImages' / f'{name}.{fmt}')
    jpg.unlink()
  records = custom_data.read_voc_folder(str(tmp_path), 'trainval', CLASSES)
  assert [os.path.basename(r.path) for r in records] == ['a.png', 'b.bmp']


def test_a_split_without_a_readable_image_is_a_clear_error(tmp_path, load_config):
  synthetic.write_voc_folder(tmp_path, [('a', b'not an image', []), ('b', b'nor this', [])])
  c = load_config('voc300')
  c.data.format, c.data.root, c.data.class_names = 'voc_folder', str(tmp_path), CLASSES
  c.model.num_classes, c.data.train_splits = 3, ('trainval',)
  with pytest.raises(ValueError, match=r'no readable image in .* split trainval: all 2 listed'):
    input_pipeline.train_dataset(c, 0, 1)


def test_degenerate_boxes_are_reported_once_per_kind_and_file(tmp_path, caplog):
  bad = [('cat', False, 30, 5, 10, 20), ('cat', False, 25, 5, 12, 20),  # xmin > xmax, twice
         ('dog', False, 5, 5, 5, 20),                                      # zero width
         ('dog', False, 50, 40, 60, 45),                                   # outside the image
         ('cat', False, 2, 2, 20, 20)]                                     # fine
  synthetic.write_voc_folder(tmp_path, [('a', Image.new('RGB', (40, 30)), bad),
                                        ('b', Image.new('RGB', (40, 30)), bad[:1])])
  with caplog.at_level(py_logging.WARNING):
    records = custom_data.read_voc_folder(str(tmp_path), 'trainval', CLASSES)
  assert [len(r.labels) for r in records] == [1, 0]
  lines = caplog.text.splitlines()
  assert sum('a.xml: dropped boxes with xmin > xmax' in line for line in lines) == 1
  assert sum('b.xml: dropped boxes with xmin > xmax' in line for line in lines) == 1
  assert any('a.xml: dropped boxes of zero width or height' in line for line in lines)
  assert any('a.xml: dropped boxes entirely outside the image' in line for line in lines)
  assert ('3 dropped: boxes with xmin > xmax or ymin > ymax, 1 dropped: boxes of zero width or '
          'height, 1 dropped: boxes entirely outside the image') in caplog.text
  data = {'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 40, 'height': 30}],
          'categories': [{'id': 1, 'name': 'cat'}],
          'annotations': [{'id': 5, 'image_id': 1, 'category_id': 1, 'bbox': [10, 5, -4, 8]}]}
  (tmp_path / 'ann.json').write_text(json.dumps(data))
  custom_data.read_coco_json(str(tmp_path / 'ann.json'), str(tmp_path / 'JPEGImages'), None)
  assert 'ann.json: dropped boxes of negative width or height (annotation 5)' in caplog.text


# --- minor: preemption's exit status -------------------------------------------------

def test_preempted_run_exits_75_after_saving(tmp_path, squares):
  command = [sys.executable, '-m', 'ssd_jax.main', f'--config={ROOT}/configs/voc300.py',
             f'--workdir={tmp_path / "run"}', '--config.model.image_size=96',
             '--config.model.width=0.125', '--config.model.num_classes=3',
             "--config.model.sources=('conv4_3','conv7','conv8_2','conv9_2')",
             "--config.anchors.min_sizes=()", "--config.anchors.max_sizes=()",
             "--config.anchors.steps=()", "--config.anchors.aspect_ratios=((2,),(2,3),(2,3),(2,))",
             '--config.data.format=voc_folder', f'--config.data.root={squares}',
             "--config.data.class_names=('red','green')", "--config.data.train_splits=('trainval',)",
             '--config.train.batch_size=8', '--config.train.num_steps=100000',
             '--config.train.log_every=1']
  run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not list((tmp_path / 'run').glob('events.out.tfevents*')):
    time.sleep(0.5)
  time.sleep(2.0)
  run.send_signal(signal.SIGTERM)
  output = run.communicate(timeout=240)[0]
  assert run.returncode == 75, output[-3000:]
  assert 'run the same command to resume' in output
  assert any(n.isdigit() for n in os.listdir(tmp_path / 'run' / 'checkpoints'))
