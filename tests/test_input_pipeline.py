"""The TFDS pipelines: mock VOC/COCO batches, per-host sharding, clear errors."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ssd_jax.data import input_pipeline

NUM_IMAGES = 7


@pytest.mark.parametrize('name', ['voc300', 'coco300'])
def test_mock_train_and_eval_batches_have_declared_shapes(load_config, name):
  c = load_config(name)
  c.train.batch_size = 4
  c.data.max_boxes = 20
  with tfds.testing.mock_data(num_examples=6):
    batch = next(iter(input_pipeline.train_dataset(c, 0, 1)))
    eval_ds, steps = input_pipeline.eval_dataset(c, 0, 1)
    eval_batch = next(iter(eval_ds))
  assert batch['image'].shape == (4, 300, 300, 3) and batch['image'].dtype == tf.float32
  assert batch['boxes'].shape == (4, 20, 4) and batch['boxes'].dtype == tf.float32
  assert batch['labels'].shape == (4, 20) and batch['labels'].dtype == tf.int32
  labels = batch['labels'].numpy()
  assert labels.max() < c.model.num_classes and labels.min() >= 0
  boxes = batch['boxes'].numpy()[labels > 0]
  assert np.all(boxes[:, 2:] > boxes[:, :2]) and boxes.min() >= 0 and boxes.max() <= 1
  assert np.all(batch['boxes'].numpy()[labels == 0] == 0)  # padding is zeros
  assert steps == 2 and eval_batch['mask'].dtype == tf.bool
  assert eval_batch['difficult'].shape == (4, 20) and eval_batch['image_id'].dtype == tf.int64


@pytest.fixture(scope='module')
def tiny_data_dir(tmp_path_factory):
  """A real on-disk TFDS dataset in VOC's feature layout (mock data ignores sub-splits)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
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
      split_datasets={'test': [(i, example(i)) for i in range(NUM_IMAGES)],
                      'train': [(i, example(i)) for i in range(NUM_IMAGES)]})
  return data_dir


def test_two_hosts_cover_the_eval_split_exactly_once(load_config, tiny_data_dir):
  c = load_config('voc300')
  c.data.data_dir, c.data.eval_split = tiny_data_dir, 'tiny_det:test'
  c.train.batch_size = 4
  seen, all_steps = [], []
  for host in range(2):
    ds, steps = input_pipeline.eval_dataset(c, host, 2)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == steps
    all_steps.append(steps)
    for b in batches:
      assert b['image'].shape[0] == 2  # the host's share of the global batch
      seen += [int(pixel) for pixel, real in zip(b['image'][:, 0, 0, 0], b['mask']) if real]
  assert all_steps[0] == all_steps[1]
  # Each image is filled with its index, minus the mean pixel's red value.
  assert sorted(round(v + 123.0) for v in seen) == list(range(NUM_IMAGES))


def test_two_hosts_train_on_disjoint_shards(load_config, tiny_data_dir):
  c = load_config('voc300')
  c.data.data_dir, c.data.train_splits = tiny_data_dir, ('tiny_det:train',)
  c.train.batch_size = 2
  c.augment.enabled = False
  per_host = []
  for host in range(2):
    batches = input_pipeline.train_dataset(c, host, 2).take(30).as_numpy_iterator()
    per_host.append({round(v + 123.0) for b in batches for v in b['image'][:, 0, 0, 0]})
  assert not per_host[0] & per_host[1]
  assert per_host[0] | per_host[1] == set(range(NUM_IMAGES))


def test_clear_errors(load_config, tmp_path):
  c = load_config('voc300')
  c.train.batch_size = 6
  with pytest.raises(ValueError, match='train.batch_size=6 does not divide over 4 hosts'):
    input_pipeline.train_dataset(c, 0, 4)
  c.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='voc/2007 was not found.*download_and_prepare'):
    input_pipeline.eval_dataset(c, 0, 1)
  with pytest.raises(ValueError, match='name:split'):
    input_pipeline.parse_split('voc2007-test')
