"""The training pixels split between host and device: the device's resample
against tf.image.resize, its colour distortion against a NumPy (colorsys)
version of the release's and a NumPy version of DALI's colour twist, the host's
buffer and its crop-only JPEG decoding."""
import colorsys

import jax
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from ssd_jax import config_lib, pixels
from ssd_jax.data import augment, sources
from ssd_jax.testing import numpy_reference as ref
from ssd_jax.testing import synthetic

MEAN = config_lib.MEAN_RGB
RNG = np.random.default_rng(0)


def random_crop_in_buffer(h: int, w: int):
  """A random u8 [h, w, 3] crop, and a 144 x 96 buffer holding it top-left."""
  crop = RNG.integers(0, 256, (h, w, 3), np.uint8)
  buffer = np.zeros((144, 96, 3), np.uint8)
  buffer[:h, :w] = crop
  return crop, buffer


@pytest.mark.parametrize('method', pixels.RELEASE_RESIZE_METHODS)
@pytest.mark.parametrize('crop_hw, place', [((41, 77), (5, 9, 50, 70)),    # enlarged
                                            ((140, 90), (60, 3, 80, 78))])  # shrunk 7x, 1.2x
def test_a_crop_in_its_place_is_tf_resize_with_the_mean_around(method, crop_hw, place):
  """A crop in a 144 x 96 buffer, resized onto its place in 80 x 80."""
  (h, w), (y0, x0, y1, x1) = crop_hw, place
  crop, buffer = random_crop_in_buffer(h, w)
  got = synthetic.finish_image(buffer, (h, w), place, pixels.RESIZE_METHODS.index(method), 80,
                               MEAN)
  want = np.broadcast_to(np.round(MEAN), (80, 80, 3)).copy()
  resized = tf.image.resize(tf.cast(crop, tf.float32), (y1 - y0, x1 - x0), method)
  want[y0:y1, x0:x1] = np.round(np.clip(resized.numpy(), 0, 255))
  diff = np.abs(got - want)
  assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())  # rounding ties only


@pytest.mark.parametrize('crop_hw, place', [((30, 40), (5, 9, 50, 70)),    # enlarged
                                            ((140, 90), (40, 3, 75, 78)),   # shrunk 4x, 1.2x
                                            ((128, 96), (10, 20, 70, 65))])  # 2.13x, as COCO's
def test_triangular_is_dalis_resize(crop_hw, place):
  """'triangular' against a NumPy version of DALI's INTERP_TRIANGULAR resize."""
  (h, w), (y0, x0, y1, x1) = crop_hw, place
  crop, buffer = random_crop_in_buffer(h, w)
  method = pixels.RESIZE_METHODS.index('triangular')
  got = synthetic.finish_image(buffer, (h, w), place, method, 80, MEAN)
  want = np.broadcast_to(np.round(MEAN), (80, 80, 3)).astype(np.float64)
  want[y0:y1, x0:x1] = ref.dali_triangular_resize(crop, y1 - y0, x1 - x0)  # not rounded
  assert np.abs(got - want).max() <= 0.5 + 1e-3  # got: the nearest whole value
  if y1 - y0 > h and x1 - x0 > w:  # enlarging: DALI's linear filter, tf.image.resize's bilinear
    triangular, bilinear = (pixels.resample(buffer, np.array([h, w]), np.array(place), k, 80)
                            for k in (method, pixels.RESIZE_METHODS.index('bilinear')))
    np.testing.assert_allclose(triangular, bilinear, atol=1e-3)


def test_dalis_triangular_filter_is_tfs_antialiased_bilinear_inside_the_image():
  """The NumPy reference, checked against TF's own triangle filter (antialiased
  bilinear) away from the edges, where only their edge rules differ (TF drops
  the weights beyond the image, DALI repeats the edge pixel)."""
  image = RNG.uniform(0, 255, (128, 96, 1))
  got = ref.dali_triangular_resize(image, 40, 45)  # 3.2x, 2.13x
  want = tf.image.resize(image, (40, 45), 'bilinear', antialias=True).numpy()
  np.testing.assert_allclose(got[2:-2, 2:-2], want[2:-2, 2:-2], atol=1e-3)
  assert np.abs(got[0] - want[0]).max() > 0.1  # the edge rows do differ


def test_nothing_showing_is_the_mean_pixel():
  buffer = RNG.integers(0, 256, (32, 32, 3), np.uint8)
  got = synthetic.finish_image(buffer, (0, 0), (0, 0, 40, 40), 0, 40, MEAN, colour=np.ones(13))
  np.testing.assert_array_equal(got, np.broadcast_to(np.round(MEAN), got.shape))


def test_hsv_round_trip_is_tf_image():
  rgb = RNG.uniform(0, 1, (40, 40, 3)).astype(np.float32)
  rgb[0, :3] = [[0, 0, 0], [0.5, 0.5, 0.5], [1, 1, 1]]  # black, grey, white: no hue
  rgb[1, :3] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
  np.testing.assert_allclose(pixels.rgb_to_hsv(rgb), tf.image.rgb_to_hsv(rgb), atol=1e-6)
  hsv = RNG.uniform(0, 1, (40, 40, 3)).astype(np.float32)
  np.testing.assert_allclose(pixels.hsv_to_rgb(hsv), tf.image.hsv_to_rgb(hsv), atol=1e-6)


def np_distort(x, c):
  """The release's distortion of f64 [..., 3] pixels with draws c (COLOUR_FIELDS), in NumPy."""
  d = dict(zip(pixels.COLOUR_FIELDS, c))
  clip = lambda v: np.clip(v, 0, 255)  # noqa: E731
  if d['brightness']:
    x = clip(x + d['delta'])
  if d['contrast'] and d['contrast_first']:
    x = clip(x * d['alpha'])
  if d['saturation'] or d['hue']:
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
      h, s, v = colorsys.rgb_to_hsv(*(x[idx] / 255))
      h = (h + (d['turn'] if d['hue'] else 0)) % 1.0
      s = min(s * (d['factor'] if d['saturation'] else 1), 1.0)
      out[idx] = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255
    x = clip(out)
  if d['contrast'] and not d['contrast_first']:
    x = clip(x * d['alpha'])
  if d['swap']:
    x = x[..., [int(d['order_0']), int(d['order_1']), int(d['order_2'])]]
  return x


def distorted_like_numpy(cfg, stream: int, reference) -> np.ndarray:
  """40 draws of cfg's photometric distortion [40, 15]; pixels.distort applied
  with each to a random image is asserted equal to reference(image, draw)."""
  image = RNG.integers(0, 256, (6, 6, 3)).astype(np.float32)
  draws = np.stack([augment.photometric_draws(tf.constant([stream, i], tf.int64), cfg).numpy()
                    for i in range(40)])
  got = np.asarray(jax.vmap(pixels.distort, (None, 0))(image, draws))
  for g, c in zip(got, draws):
    np.testing.assert_allclose(g, reference(image.astype(np.float64), c), atol=2e-3)
  return draws


def test_distortion_with_its_draws_is_the_numpy_one():
  cfg = config_lib.base_config().augment
  cfg.channel_swap_prob = 0.5
  draws = distorted_like_numpy(cfg, 3, np_distort)
  flags = draws[:, [pixels.COLOUR_FIELDS.index(n) for n in ('brightness', 'hue', 'swap')]]
  assert 0.2 < flags.mean() < 0.8 and flags.min() == 0 and flags.max() == 1


def np_dali_twist(x, c):
  """DALI's Hsv (float output) then BrightnessContrast (centre 128) of f64 [..., 3]
  pixels with draws c (COLOUR_FIELDS), in NumPy, from the constants of DALI's
  colour operators: RGB -> YIQ, the IQ plane rotated by the hue in degrees and
  scaled by the saturation, back with DALI's own (rounded) inverse."""
  d = dict(zip(pixels.COLOUR_FIELDS, c))
  rgb_to_yiq = np.array([[.299, .587, .114], [.596, -.274, -.321], [.211, -.523, .311]])
  yiq_to_rgb = np.array([[1, .956, .621], [1, -.272, -.647], [1, -1.107, 1.705]])
  h = np.radians(d['turn'] * 360)
  hue = np.array([[1, 0, 0], [0, np.cos(h), np.sin(h)], [0, -np.sin(h), np.cos(h)]])
  sat = np.diag([1, d['factor'], d['factor']])
  v = x @ (yiq_to_rgb @ hue @ sat @ rgb_to_yiq).T
  return np.clip(d['gain'] * (128 + d['alpha'] * (v - 128)), 0, 255)


def dali_cfg():
  cfg = config_lib.base_config().augment
  cfg.photometric_style, cfg.hue_delta = 'dali', 20.0  # +-40 degrees, to be seen
  return cfg


def test_dali_twist_with_its_draws_is_the_numpy_one():
  draws = distorted_like_numpy(dali_cfg(), 5, np_dali_twist)
  d = {name: draws[:, k] for k, name in enumerate(pixels.COLOUR_FIELDS)}
  assert np.all(d['twist'] == 1) and not d['brightness'].any() and not d['contrast'].any()
  for name, (lo, hi) in (('gain', (0.875, 1.125)), ('alpha', (0.5, 1.5)),
                         ('factor', (0.5, 1.5)), ('turn', (-20 / 180, 20 / 180))):
    assert lo <= d[name].min() and d[name].max() <= hi and np.ptp(d[name]) > 0.6 * (hi - lo)


def test_dali_twist_by_hand():
  """No saturation leaves the luma Y = .299 R + .587 G + .114 B in every channel,
  then contrast and gain act on it: gain (128 + alpha (Y - 128)). A half turn of
  hue at saturation 1 maps the colour to 2 Y - colour (its IQ negated)."""
  colour = np.array([200.0, 120.0, 100.0], np.float32)
  y = .299 * 200 + .587 * 120 + .114 * 100
  draws = dict.fromkeys(pixels.COLOUR_FIELDS, 0.0) | {'twist': 1.0, 'factor': 0.0,
                                                       'alpha': 0.5, 'gain': 1.1}
  grey = pixels.distort(colour, np.array([draws[n] for n in pixels.COLOUR_FIELDS], np.float32))
  np.testing.assert_allclose(grey, [1.1 * (128 + 0.5 * (y - 128))] * 3, atol=0.02)
  draws |= {'factor': 1.0, 'alpha': 1.0, 'gain': 1.0, 'turn': 0.5}
  turned = pixels.distort(colour, np.array([draws[n] for n in pixels.COLOUR_FIELDS], np.float32))
  np.testing.assert_allclose(turned, 2 * y - colour, atol=0.5)  # DALI's inverse is rounded


def test_photometric_off_draws_nothing():
  cfg = config_lib.base_config().augment
  cfg.photometric = False
  draws = augment.photometric_draws(tf.constant([1, 2], tf.int64), cfg).numpy()
  image = RNG.uniform(0, 255, (5, 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(pixels.distort(image, draws), image)


def test_a_crop_larger_than_the_buffer_or_its_place_allows_is_shrunk_on_the_host():
  part = tf.constant(RNG.integers(0, 256, (300, 120, 3), np.uint8))
  whole, big_place = tf.constant([0, 0, 300, 120]), tf.constant([0, 0, 300, 300])
  bilinear = pixels.RESIZE_METHODS.index('bilinear')
  shrunk, size = augment.to_buffer(part, whole, big_place, 100, bilinear)
  assert shrunk.shape == (100, 100, 3) and size.numpy().tolist() == [100, 100]
  want = tf.image.resize(tf.cast(part, tf.float32), (100, 100), 'area').numpy()
  assert np.abs(shrunk.numpy() - want).max() <= 0.5
  # A place of 10 x 30 pixels: at most MAX_SHRINK (7) source pixels per output pixel.
  _, size = augment.to_buffer(part, whole, tf.constant([5, 5, 15, 35]), 512, bilinear)
  assert size.numpy().tolist() == [70, 120]
  # 'triangular' reads twice its shrink: at most 4 source pixels per output pixel.
  triangular = pixels.RESIZE_METHODS.index('triangular')
  _, size = augment.to_buffer(part, whole, tf.constant([5, 5, 15, 35]), 512, triangular)
  assert size.numpy().tolist() == [40, 120]
  fits, fits_size = augment.to_buffer(part[:50, :60], tf.constant([0, 0, 50, 60]), big_place, 100,
                                      bilinear)
  assert fits_size.numpy().tolist() == [50, 60]
  np.testing.assert_array_equal(fits, part.numpy()[:50, :60])
  _, empty = augment.to_buffer(part[:1, :1], tf.constant([10, 10, 10, 30]), big_place, 100,
                               bilinear)
  assert empty.numpy().tolist() == [0, 0]


def test_a_jpeg_decodes_only_its_crop():
  photo = skimage.data.astronaut()[:375, :500]
  encoded = tf.io.encode_jpeg(photo, quality=90)
  whole = tf.io.decode_jpeg(encoded).numpy().astype(int)
  ex = sources.left_encoded(encoded)
  assert ex['image'].shape == (0, 0, 3)  # a JPEG stays encoded
  shape = sources.image_shape(ex)
  assert shape.numpy().tolist() == [375, 500]
  for y0, x0, y1, x1 in ((0, 0, 375, 500), (13, 27, 113, 238), (300, 0, 375, 17)):
    got = sources.decode_crop(ex, tf.constant([y0, x0, y1, x1]), shape).numpy().astype(int)
    assert got.shape == (y1 - y0, x1 - x0, 3)
    diff = np.abs(got - whole[y0:y1, x0:x1])  # libjpeg's upsampling at the crop's edges
    assert diff.max() <= 4 and diff.mean() < 0.05
  png = sources.left_encoded(tf.io.encode_png(photo[:40, :50]))  # decoded once, at once
  assert png['image'].shape == (40, 50, 3)
  assert sources.image_shape(png).numpy().tolist() == [40, 50]
  np.testing.assert_array_equal(
      sources.decode_crop(png, tf.constant([5, 6, 25, 36]), tf.constant([40, 50])),
      photo[5:25, 6:36])

