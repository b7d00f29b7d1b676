"""The built-in ssd_shapes dataset: deterministic, boxes on the visible extent of
the drawn shapes, and readable by the real pipeline."""
import numpy as np
import pytest

from ssd_jax import labels
from ssd_jax.data import input_pipeline, shapes_dataset
from ssd_jax.testing import step_inputs

CONFIG = shapes_dataset.ShapesConfig(name='test')


def test_generation_is_deterministic():
  a, b = shapes_dataset.generate(7, CONFIG), shapes_dataset.generate(7, CONFIG)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], shapes_dataset.generate(8, CONFIG)[0])


def test_boxes_are_the_drawn_extent_of_the_shapes():
  """An unoccluded square fills its box with one colour; the textured
  background never does."""
  checked = 0
  for seed in range(60):
    image, boxes, classes = shapes_dataset.generate(seed, CONFIG)
    assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])
    sides = boxes[:, 2:] - boxes[:, :2]
    assert np.all(sides >= CONFIG.min_side * 0.8 - 1 / CONFIG.image_size)
    for k, (box, cls) in enumerate(zip(boxes, classes)):
      others = np.delete(boxes, k, axis=0)
      apart = np.all((others[:, 0] >= box[2]) | (others[:, 2] <= box[0])
                     | (others[:, 1] >= box[3]) | (others[:, 3] <= box[1]))
      if labels.SHAPES_NAMES[cls] != 'square' or not apart:
        continue
      x0, y0, x1, y1 = np.round(box * CONFIG.image_size).astype(int)
      inside = image[y0:y1, x0:x1].reshape(-1, 3)
      assert np.all(inside == inside[0])
      ring = image[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1].reshape(-1, 3)
      assert not np.all(ring == inside[0]) or (x0 == 0 and y0 == 0)
      checked += 1
  assert checked >= 5


def test_an_occluded_shape_s_box_is_the_extent_of_its_visible_pixels():
  """Shape 1 covers the right half of shape 0; shape 2 is hidden under shape 3."""
  owner = np.full((10, 10), -1)
  owner[2:8, 2:8] = 0
  owner[:, 5:] = 1
  owner[0:2, 0:2] = 3
  expected = [[2, 2, 5, 8], [5, 0, 10, 10], [0, 0, 0, 0], [0, 0, 2, 2]]
  np.testing.assert_array_equal(shapes_dataset.visible_boxes(owner, 4), expected)


@pytest.fixture(scope='module')
def shapes_config(tmp_path_factory, load_config):
  c = load_config('shapes')
  c.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  c.data.train_splits, c.data.eval_split = ('ssd_shapes/small:train',), 'ssd_shapes/small:test'
  c.train.batch_size = 8
  return c


def test_the_pipeline_reads_the_generated_dataset(shapes_config):
  batch = next(input_pipeline.train_dataset(shapes_config).as_numpy_iterator())
  s, m = shapes_config.model.image_size, shapes_config.data.max_boxes
  assert step_inputs.finished_images(batch, shapes_config).shape == (8, s, s, 3)
  assert batch['boxes'].shape == (8, m, 4)
  assert batch['labels'].max() <= len(labels.SHAPES_NAMES) and batch['labels'].max() >= 1
  ds, steps = input_pipeline.eval_dataset(shapes_config)
  batches = list(ds.as_numpy_iterator())
  assert steps == len(batches) == 2 and sum(b['mask'].sum() for b in batches) == 16
  ids = np.concatenate([b['image_id'][b['mask']] for b in batches])
  assert len(set(ids.tolist())) == 16
