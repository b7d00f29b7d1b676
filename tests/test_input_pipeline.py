"""The tf.data pipelines: mock VOC/COCO batches, the order over the union, exact
resume on 1 and 2 simulated hosts, per-host shares, clear errors."""
import itertools
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ssd_jax import config_lib, pixels
from ssd_jax.data import input_pipeline, sources
from ssd_jax.testing import step_inputs, tfds_mock

NUM_IMAGES = 7


@pytest.mark.parametrize('name', ['voc300', 'coco300'])
def test_mock_train_and_eval_batches_have_declared_shapes(load_config, name):
  c = load_config(name)
  c.train.batch_size = 4
  c.data.max_boxes = 20
  c = config_lib.validate(c)
  with tfds_mock.mock_detection_data(num_examples=6):
    batch = next(iter(input_pipeline.train_dataset(c, 0, 1)))
    eval_ds, steps = input_pipeline.eval_dataset(c, 0, 1)
    eval_batch = next(iter(eval_ds))
  p = c.data.pixel_buffer  # 512 (VOC's images are at most 500 a side), COCO's 640
  assert batch['pixels'].shape == (4, p, p, 3) and batch['pixels'].dtype == tf.uint8
  assert step_inputs.finished_images(batch, c).shape == (4, 300, 300, 3)
  for buffer, (h, w) in zip(batch['pixels'].numpy(), batch['pixels_size'].numpy()):
    assert buffer[:h, :w].any() and not buffer[h:].any() and not buffer[:, w:].any()
  assert batch['boxes'].shape == (4, 20, 4) and batch['boxes'].dtype == tf.float32
  assert batch['labels'].shape == (4, 20) and batch['labels'].dtype == tf.int32
  labels = batch['labels'].numpy()
  assert labels.max() < c.model.num_classes and labels.min() >= 0
  boxes = batch['boxes'].numpy()[labels > 0]
  assert np.all(boxes[:, 2:] > boxes[:, :2]) and boxes.min() >= 0 and boxes.max() <= 1
  assert np.all(batch['boxes'].numpy()[labels == 0] == 0)  # padding is zeros
  assert steps == 2 and eval_batch['mask'].dtype == tf.bool
  assert eval_batch['image'].dtype == tf.float32 and eval_batch['image_id'].dtype == tf.int64
  n = eval_batch['labels'].shape[1]  # the most boxes in the batch: nothing cut
  assert eval_batch['difficult'].shape == (4, n) and eval_batch['boxes'].shape == (4, n, 4)


def store_tiny(data_dir, file_format='array_record'):
  """A real on-disk TFDS dataset in VOC's feature layout; image i is filled with i."""
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)),
      'image/filename': tfds.features.Text(),
      'objects': tfds.features.Sequence({
          'bbox': tfds.features.BBoxFeature(),
          'label': tfds.features.ClassLabel(num_classes=20),
          'is_difficult': tf.bool,
      }),
  })

  def example(i):
    return {'image': np.full((20, 30, 3), i, np.uint8), 'image/filename': f'{i:04d}.jpg',
            'objects': {'bbox': np.array([[0.1, 0.1, 0.5, 0.6]], np.float32), 'label': [i % 20],
                        'is_difficult': [i % 3 == 0]}}

  tfds.dataset_builders.store_as_tfds_dataset(
      name='tiny_det', version='1.0.0', features=features, data_dir=data_dir,
      file_format=file_format,
      split_datasets={'test': [(i, example(i)) for i in range(NUM_IMAGES)],
                      'train': [(i, example(i)) for i in range(NUM_IMAGES)]})
  return data_dir


@pytest.fixture(scope='module')
def tiny_data_dir(tmp_path_factory):
  return store_tiny(str(tmp_path_factory.mktemp('tfds')))


def tiny_config(load_config, data_dir, batch_size, augment=False):
  c = load_config('voc300')
  c.data.data_dir, c.data.train_splits = data_dir, ('tiny_det:train',)
  c.data.eval_split = 'tiny_det:test'
  c.model.image_size, c.data.max_boxes = 32, 2
  c.train.batch_size = batch_size
  c.augment.enabled = augment
  return c


def content(batch) -> list[int]:
  """Which tiny_det image each row is (its fill value, unaugmented)."""
  return [int(v) for v in batch['pixels'][:, 0, 0, 0]]


def batches(config, host, hosts, start, count):
  ds = input_pipeline.train_dataset(config, host, hosts, start_step=start)
  return list(ds.take(count).as_numpy_iterator())


def test_two_hosts_cover_the_eval_split_exactly_once(load_config, tiny_data_dir):
  c = tiny_config(load_config, tiny_data_dir, 4)
  seen, all_steps = [], []
  for host in range(2):
    ds, steps = input_pipeline.eval_dataset(c, host, 2)
    found = list(ds.as_numpy_iterator())
    assert len(found) == steps
    all_steps.append(steps)
    for b in found:
      assert b['image'].shape[0] == 2  # the host's share of the global batch
      seen += [round(float(v)) for v, real in zip(b['image'][:, 0, 0, 0], b['mask']) if real]
  assert all_steps[0] == all_steps[1]
  assert sorted(seen) == list(range(NUM_IMAGES))


def test_no_pipeline_runs_the_autotuning_model(load_config, tiny_data_dir):
  """Destroying an iterator waits for tf.data's autotuning thread, which sleeps
  up to a minute between rounds (a run's end stalled up to 54 s with it), so
  every pipeline here turns it off; the streams still read examples in parallel."""
  c = tiny_config(load_config, tiny_data_dir, 4)
  streams = {'train': input_pipeline.train_dataset(c, 0, 1),
             'eval': input_pipeline.eval_dataset(c, 0, 1)[0],
             'drawn': input_pipeline.decoded_eval_examples(c, 2)}
  for name, ds in streams.items():
    assert ds.options().autotune.enabled is False, name
  assert input_pipeline.PARALLEL_CALLS == len(os.sched_getaffinity(0))


def test_each_pass_is_a_new_permutation_of_the_union(load_config, tiny_data_dir):
  c = tiny_config(load_config, tiny_data_dir, 1)
  c.data.train_splits = ('tiny_det:train', 'tiny_det:test')  # 14 examples, 7 twice
  order = [content(b)[0] for b in batches(c, 0, 1, 0, 3 * 2 * NUM_IMAGES)]
  passes = [order[i:i + 2 * NUM_IMAGES] for i in range(0, len(order), 2 * NUM_IMAGES)]
  for p in passes:
    assert sorted(p) == sorted(list(range(NUM_IMAGES)) * 2)  # every example once
  assert passes[0] != passes[1] != passes[2]
  assert passes[0][:NUM_IMAGES] != list(range(NUM_IMAGES))  # shuffled over the union


def test_hosts_read_disjoint_shares_of_each_global_batch(load_config, tiny_data_dir):
  """2 hosts x 2 examples = the 1-host batch of 4, row for row, augmentation included."""
  c = tiny_config(load_config, tiny_data_dir, 4, augment=True)
  one = batches(c, 0, 1, 0, 5)
  two = [batches(c, host, 2, 0, 5) for host in range(2)]
  for b in range(5):
    for key in ('boxes', 'labels', *pixels.FINISH_FIELDS):
      np.testing.assert_array_equal(np.concatenate([two[0][b][key], two[1][b][key]]),
                                    one[b][key])


@pytest.mark.parametrize('hosts', [1, 2])
def test_resumed_stream_equals_the_uninterrupted_one(load_config, tiny_data_dir, hosts):
  """Restarting at step N gives the same batches, for N mid-pass and across the
  pass boundary (7 examples, 2 per global batch: step 3 holds the pass end)."""
  c = tiny_config(load_config, tiny_data_dir, 2 * hosts, augment=True)
  for host in range(hosts):
    straight = batches(c, host, hosts, 0, 10)
    for start in (1, 3, 4, 7):
      resumed = batches(c, host, hosts, start, 10 - start)
      for a, b in zip(resumed, straight[start:], strict=True):
        for key in a:
          np.testing.assert_array_equal(a[key], b[key], err_msg=f'{key} host {host}')


def test_resume_reads_no_earlier_record(load_config, tiny_data_dir, monkeypatch):
  reads = []
  original = sources.TfdsSource._read
  monkeypatch.setattr(sources.TfdsSource, '_read',
                      lambda self, i: reads.append(int(i)) or original(self, i))
  c = tiny_config(load_config, tiny_data_dir, 2)
  batches(c, 0, 1, 100_000, 1)  # 200,000 positions in
  assert 2 <= len(reads) < 64  # the batch and what prefetching reads ahead


def test_clear_errors(load_config, tmp_path, tiny_data_dir):
  c = load_config('voc300')
  c.train.batch_size = 6
  with pytest.raises(ValueError, match='train.batch_size=6 does not divide over 4 hosts'):
    input_pipeline.train_dataset(c, 0, 4)
  c.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='voc/2007 was not found.*download_and_prepare'):
    input_pipeline.eval_dataset(c, 0, 1)
  with pytest.raises(ValueError, match='name:split'):
    sources.parse_split('voc2007-test')
  c = tiny_config(load_config, tiny_data_dir, 2)
  c.data.eval_split = 'tiny_det:tset'
  with pytest.raises(ValueError, match=r"data.eval_split names 'tiny_det:tset': TFDS dataset "
                     r"tiny_det in .* has no split 'tset'; its splits are \['test', 'train'\]"):
    input_pipeline.eval_dataset(c, 0, 1)
  c.data.train_splits = ('tiny_det:train[:50%]+tst',)
  with pytest.raises(ValueError, match=r"data.train_splits names .*has no split 'tst'"):
    input_pipeline.train_source(c)
  old = store_tiny(str(tmp_path / 'tfrecord'), file_format='tfrecord')
  with pytest.raises(ValueError, match="stored as TFRecord.*file_format='array_record'"):
    input_pipeline.eval_dataset(tiny_config(load_config, old, 2), 0, 1)


def test_train_batches_warns_once_per_image_over_max_boxes(load_config, tmp_path, caplog):
  from ssd_jax.testing import synthetic
  synthetic.write_voc_folder(tmp_path, [
      ('many', synthetic.Image.new('RGB', (64, 48)),
       [('red', False, 2 + 6 * k, 2, 6 + 6 * k, 40) for k in range(5)])])
  c = load_config('voc300')
  c.data.format, c.data.root, c.data.class_names = 'voc_folder', str(tmp_path), ('red',)
  c.model.num_classes, c.data.train_splits, c.data.max_boxes = 2, ('trainval',), 3
  c.augment.enabled, c.train.batch_size = False, 1
  with caplog.at_level('WARNING'):
    got = list(itertools.islice(input_pipeline.train_batches(c), 3))
  assert all(b['labels'].shape == (1, 3) and set(b) == {'boxes', 'labels', *pixels.FINISH_FIELDS}
             for b in got)
  assert caplog.text.count('many.jpg has 5 boxes') == 1


EXIT_WITH_A_LIVE_STREAM = '''
import pathlib, sys
from ssd_jax import config_lib
from ssd_jax.data import input_pipeline
c = config_lib.load(sys.argv[1])
c.data.format, c.data.root, c.data.class_names = 'voc_folder', sys.argv[2], ('thing',)
c.model.num_classes, c.data.train_splits, c.train.batch_size = 2, ('trainval',), 8
c.data.eval_split = 'trainval'
c = config_lib.validate(c)
streams = {  # each left open at module level, map calls in flight, to the interpreter's exit
    'train_batches': lambda: input_pipeline.train_batches(c),
    'iter': lambda: iter(input_pipeline.train_dataset(c)),
    'as_numpy_iterator': lambda: input_pipeline.train_dataset(c, 3).as_numpy_iterator(),
    'eval': lambda: input_pipeline.eval_dataset(c)[0].repeat().as_numpy_iterator(),
}
stream = streams[sys.argv[3]]()
next(stream)
print('done')
'''


@pytest.mark.parametrize('driven', ['train_batches', 'iter', 'as_numpy_iterator', 'eval'])
def test_a_live_stream_does_not_hang_the_exit(driven, tmp_path):
  """Streams however driven (train_batches, iter() or as_numpy_iterator() of the
  datasets) left open at exit. Without the exit gate (sources.PythonCalls) runs
  like these hung until killed: with train_batches 4 of 6 runs, with iter() of
  train_dataset every run (photos keep map calls in flight)."""
  import subprocess
  import sys
  from ssd_jax.testing import synthetic
  synthetic.photo_voc_folder(tmp_path, 32)
  config = str(pathlib.Path(__file__).resolve().parent.parent / 'configs' / 'voc300.py')
  run = subprocess.run([sys.executable, '-c', EXIT_WITH_A_LIVE_STREAM, config, str(tmp_path),
                        driven], capture_output=True, text=True, timeout=90)
  assert run.returncode == 0 and 'done' in run.stdout, run.stderr[-2000:]
  assert 'Traceback' not in run.stderr, run.stderr[-2000:]
