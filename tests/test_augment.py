"""Augmentation invariants on generated images with known boxes."""
import numpy as np
import pytest
import tensorflow as tf

from ssd_jax import config_lib
from ssd_jax.data import augment


@pytest.fixture
def cfg():
  return config_lib.base_config().augment


def seeds(n):
  return [tf.constant([7, i], tf.int64) for i in range(n)]


def scene(h=120, w=160):
  """A grey image with two solid rectangles; their boxes (normalised xyxy) and labels."""
  image = np.full((h, w, 3), 90.0, np.float32)
  pixel_boxes = [(20, 10, 70, 60), (90, 50, 150, 110)]  # x0, y0, x1, y1
  colours = [(250, 10, 10), (10, 250, 10)]
  for (x0, y0, x1, y1), c in zip(pixel_boxes, colours):
    image[y0:y1, x0:x1] = c
  boxes = np.array(pixel_boxes, np.float32) / [w, h, w, h]
  return tf.constant(image), tf.constant(boxes, tf.float32), tf.constant([3, 5], tf.int32)


def test_train_augment_keeps_boxes_valid(cfg):
  image, boxes, labels = scene()
  for seed in seeds(40):
    out_image, out_boxes, out_labels = augment.train_augment(image, boxes, labels, seed, cfg,
                                                             config_lib.MEAN_RGB)
    b = out_boxes.numpy()
    assert out_image.shape[-1] == 3 and len(b) == len(out_labels.numpy())
    assert np.all(b >= 0) and np.all(b <= 1)
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    assert set(out_labels.numpy()) <= {3, 5}
    assert 0 <= out_image.numpy().min() and out_image.numpy().max() <= 255


def test_crop_keeps_exactly_the_boxes_whose_centre_is_inside():
  image, _, _ = scene(100, 100)
  boxes = np.array([[0.1, 0.1, 0.3, 0.3],    # centre (0.2, 0.2): inside
                    [0.3, 0.3, 0.9, 0.9],    # centre (0.6, 0.6): outside, overlaps
                    [0.45, 0.0, 0.55, 0.2],  # centre (0.5, 0.1): inside, clipped at x1
                    [0.7, 0.7, 0.8, 0.8]], np.float32)
  labels = tf.constant([1, 2, 3, 4])
  patch = tf.constant([5, 0, 50, 50])  # pixels x0, y0, x1, y1
  out_image, out_boxes, out_labels = augment.crop_to(image, tf.constant(boxes), labels, patch)
  assert out_image.shape == (50, 45, 3)
  np.testing.assert_array_equal(out_labels, [1, 3])
  # Clipped to the patch [0.05, 0, 0.5, 0.5], then normalised by it.
  want = (np.array([[0.1, 0.1, 0.3, 0.3], [0.45, 0.0, 0.5, 0.2]]) - [0.05, 0, 0.05, 0]) / \
      [0.45, 0.5, 0.45, 0.5]
  np.testing.assert_allclose(out_boxes, want, atol=1e-6)


def test_sampled_crops_satisfy_min_iou_and_centres(cfg):
  image, boxes, labels = scene()
  crops = 0
  for seed in seeds(60):
    out_image, out_boxes, out_labels = augment.min_iou_crop(image, boxes, labels, seed, cfg)
    if out_image.shape != image.shape:
      crops += 1
      assert len(out_labels.numpy()) >= 1  # a sampled patch holds a box centre
      h, w = out_image.shape[:2]
      aspect = w / h
      assert 0.5 <= aspect <= 2.0
  assert crops > 10


def test_flip_twice_is_identity():
  image, boxes, _ = scene()
  once_image, once_boxes = augment.flip(image, boxes)
  twice_image, twice_boxes = augment.flip(once_image, once_boxes)
  np.testing.assert_array_equal(twice_image, image)
  np.testing.assert_allclose(twice_boxes, boxes, atol=1e-7)
  # Once: the red box's pixels moved to the mirrored box.
  x0, y0, x1, y1 = (once_boxes[0].numpy() * [160, 120, 160, 120]).round().astype(int)
  assert np.all(once_image.numpy()[y0:y1, x0:x1] == [250, 10, 10])


def test_zoom_out_keeps_box_content_at_the_mapped_place():
  image, boxes, _ = scene()
  mean = (123.0, 117.0, 104.0)
  for seed in seeds(10):
    out, out_boxes = augment.zoom_out(image, boxes, seed, mean, 4.0)
    h, w = out.shape[:2]
    assert h >= 120 and w >= 160
    for box, colour in zip(out_boxes.numpy(), [(250, 10, 10), (10, 250, 10)]):
      x0, y0, x1, y1 = (box * [w, h, w, h]).round().astype(int)
      np.testing.assert_array_equal(out.numpy()[y0:y1, x0:x1].reshape(-1, 3).min(0),
                                    out.numpy()[y0:y1, x0:x1].reshape(-1, 3).max(0))
      np.testing.assert_allclose(out.numpy()[y0, x0], colour)
    # The canvas outside the image is the mean pixel.
    corner = out.numpy()[0, 0]
    if h > 120 + 1 and w > 160 + 1 and not np.allclose(corner, 90.0):
      np.testing.assert_allclose(corner, mean)


def test_photometric_steps_stay_in_range_and_change_the_image(cfg):
  image, _, _ = scene()
  changed = 0
  for seed in seeds(10):
    out = augment.photometric_distort(image, seed, cfg).numpy()
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
    changed += not np.allclose(out, image.numpy(), atol=1e-3)
  assert changed >= 5


def test_augmentation_switches(cfg):
  image, boxes, labels = scene()
  for name in ('photometric', 'zoom_out', 'crop', 'flip'):
    cfg[name] = False
  out_image, out_boxes, _ = augment.train_augment(image, boxes, labels, seeds(1)[0], cfg,
                                                  config_lib.MEAN_RGB)
  np.testing.assert_array_equal(out_image, image)
  np.testing.assert_allclose(out_boxes, boxes)
