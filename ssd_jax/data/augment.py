"""SSD training augmentation in TensorFlow ops, after the authors' released recipe.

Images are float32 [H, W, 3] RGB in [0, 255]; boxes are float32 [N, 4]
normalised xyxy with N varying per image; labels int32 [N]. Every random step
takes a stateless seed (int32[2]), so a run is reproducible and resumable.
"""
from __future__ import annotations

import tensorflow as tf

_split = tf.random.experimental.stateless_split


def _uniform(seed, low=0.0, high=1.0, shape=()):
  return tf.random.stateless_uniform(shape, seed, low, high)


def _maybe(seed, prob, fn, x):
  """fn(x) with probability `prob`, else x."""
  return tf.cond(_uniform(seed) < prob, lambda: fn(x), lambda: x)


def photometric_distort(image, seed, cfg):
  """Brightness, contrast, saturation, hue, channel order; each with cfg.photometric_prob.

  Contrast goes before or after the colour steps, at random.
  """
  s = _split(seed, 12)
  p = cfg.photometric_prob
  lo_c, hi_c = cfg.contrast_range
  lo_s, hi_s = cfg.saturation_range

  def contrast(x):
    return x * _uniform(s[1], lo_c, hi_c)

  do_saturation, do_hue = _uniform(s[2]) < p, _uniform(s[4]) < p

  def to_hsv_and_back(x):
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 255.0) / 255.0)
    sat = hsv[..., 1] * tf.where(do_saturation, _uniform(s[3], lo_s, hi_s), 1.0)
    hue = hsv[..., 0] + tf.where(do_hue, _uniform(s[5], -cfg.hue_delta, cfg.hue_delta), 0.0) / 360.0
    hsv = tf.stack([tf.math.floormod(hue, 1.0), tf.clip_by_value(sat, 0.0, 1.0), hsv[..., 2]], -1)
    return tf.image.hsv_to_rgb(hsv) * 255.0

  def colour(x):  # the HSV round trip only when a colour step is drawn
    return tf.cond(do_saturation | do_hue, lambda: to_hsv_and_back(x), lambda: x)

  image = _maybe(s[6], p, lambda x: x + _uniform(s[7], -cfg.brightness_delta,
                                                  cfg.brightness_delta), image)
  contrast_first = _uniform(s[8]) < 0.5
  image = tf.cond(contrast_first, lambda: _maybe(s[0], p, contrast, image), lambda: image)
  image = colour(image)
  image = tf.cond(contrast_first, lambda: image, lambda: _maybe(s[0], p, contrast, image))
  permutation = tf.random.experimental.stateless_shuffle(tf.range(3), s[9])
  image = _maybe(s[10], p, lambda x: tf.gather(x, permutation, axis=-1), image)
  return tf.clip_by_value(image, 0.0, 255.0)


def zoom_out(image, boxes, seed, mean_rgb, max_ratio):
  """Place the image on a mean-filled canvas up to `max_ratio` times its side."""
  s = _split(seed, 3)
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  ratio = _uniform(s[0], 1.0, max_ratio)
  canvas_h, canvas_w = tf.floor(h * ratio), tf.floor(w * ratio)
  top = tf.floor(_uniform(s[1], 0.0, canvas_h - h + 1.0))
  left = tf.floor(_uniform(s[2], 0.0, canvas_w - w + 1.0))
  mean = tf.constant(mean_rgb, tf.float32)
  pads = [[tf.cast(top, tf.int32), tf.cast(canvas_h - h - top, tf.int32)],
          [tf.cast(left, tf.int32), tf.cast(canvas_w - w - left, tf.int32)], [0, 0]]
  image = tf.pad(image - mean, pads) + mean
  scale = tf.stack([w, h, w, h])
  offset = tf.stack([left, top, left, top])
  boxes = (boxes * scale + offset) / tf.stack([canvas_w, canvas_h, canvas_w, canvas_h])
  return image, boxes


def _iou_patches_boxes(patches, boxes):
  """f[T, 4] xyxy, f[N, 4] xyxy -> f[T, N] IoU (same unit)."""
  p, b = patches[:, None, :], boxes[None, :, :]
  inter_wh = tf.maximum(tf.minimum(p[..., 2:], b[..., 2:]) - tf.maximum(p[..., :2], b[..., :2]), 0)
  inter = inter_wh[..., 0] * inter_wh[..., 1]
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
  return inter / tf.maximum(area(p) + area(b) - inter, 1e-12)


def centres_inside(boxes, patches):
  """f[N, 4] xyxy boxes, f[..., 4] xyxy patches -> bool[..., N]: centre in patch."""
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  lo, hi = patches[..., None, :2], patches[..., None, 2:]
  return tf.reduce_all((centre >= lo) & (centre <= hi), axis=-1)


def crop_to(image, boxes, labels, pixel_patch):
  """Crop to int32 [x0, y0, x1, y1] pixels; keep boxes whose centre is inside, clipped."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  size = tf.stack([shape[1], shape[0], shape[1], shape[0]])
  patch = tf.cast(pixel_patch, tf.float32) / size
  keep = centres_inside(boxes, patch)
  boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
  patch_wh = patch[2:] - patch[:2]
  boxes = tf.concat([tf.maximum(boxes[:, :2], patch[:2]), tf.minimum(boxes[:, 2:], patch[2:])],
                         -1)
  boxes = (boxes - tf.concat([patch[:2], patch[:2]], 0)) / tf.concat([patch_wh, patch_wh], 0)
  image = image[pixel_patch[1]:pixel_patch[3], pixel_patch[0]:pixel_patch[2]]
  return image, boxes, labels


def min_iou_crop(image, boxes, labels, seed, cfg):
  """The SSD patch sampler: choose whole image, a min-IoU in cfg.crop_min_ious, or
  any patch; try cfg.crop_trials patches of side [cfg.crop_min_scale, 1] and
  aspect ratio in cfg.crop_aspect_range; take the first that overlaps every box
  by at least the min IoU and holds at least one box centre; else no crop."""
  s = _split(seed, 4)
  options = tf.constant([-1.0] + list(cfg.crop_min_ious) + [0.0])  # -1: whole image
  min_iou = options[tf.random.stateless_uniform((), s[0], 0, len(options), tf.int32)]
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  h, w = shape[0], shape[1]
  t = cfg.crop_trials
  pw = _uniform(s[1], cfg.crop_min_scale, 1.0, (t,)) * w
  ph = _uniform(s[2], cfg.crop_min_scale, 1.0, (t,)) * h
  offsets = _uniform(s[3], 0.0, 1.0, (t, 2))
  x0, y0 = tf.floor(offsets[:, 0] * (w - pw)), tf.floor(offsets[:, 1] * (h - ph))
  pixel = tf.stack([x0, y0, x0 + tf.maximum(tf.floor(pw), 1), y0 + tf.maximum(tf.floor(ph), 1)], -1)
  aspect = (pixel[:, 2] - pixel[:, 0]) / (pixel[:, 3] - pixel[:, 1])
  ok = (aspect >= cfg.crop_aspect_range[0]) & (aspect <= cfg.crop_aspect_range[1])
  size = tf.stack([w, h, w, h])
  normalised = pixel / size
  iou = _iou_patches_boxes(normalised, boxes)
  ok &= tf.reduce_min(tf.concat([iou, tf.ones_like(iou[:, :1])], 1), axis=1) >= min_iou
  has_centre = tf.reduce_any(centres_inside(boxes, normalised), axis=1)
  ok &= has_centre | (tf.shape(boxes)[0] == 0)
  ok &= min_iou >= 0.0
  first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
  return tf.cond(tf.reduce_any(ok),
                 lambda: crop_to(image, boxes, labels, tf.cast(pixel[first], tf.int32)),
                 lambda: (image, boxes, labels))


def flip(image, boxes):
  """Mirror left-right: x -> 1 - x."""
  flipped = tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], -1)
  return image[:, ::-1], flipped


def drop_degenerate(boxes, labels, *others):
  """Clip to [0, 1] and drop boxes of zero width or height (and their other fields)."""
  boxes = tf.clip_by_value(boxes, 0.0, 1.0)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return (tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep),
          *(tf.boolean_mask(o, keep) for o in others))


def train_augment(image, boxes, labels, seed, cfg, mean_rgb):
  """The whole training chain before resizing: distort, zoom out, crop, flip."""
  s = _split(seed, 6)
  if cfg.photometric:
    image = photometric_distort(image, s[0], cfg)
  if cfg.zoom_out:
    image, boxes = tf.cond(
        _uniform(s[1]) < cfg.zoom_out_prob,
        lambda: zoom_out(image, boxes, s[2], mean_rgb, cfg.zoom_out_max_ratio),
        lambda: (image, boxes))
  if cfg.crop:
    image, boxes, labels = min_iou_crop(image, boxes, labels, s[3], cfg)
  if cfg.flip:
    image, boxes = tf.cond(_uniform(s[4]) < cfg.flip_prob, lambda: flip(image, boxes),
                           lambda: (image, boxes))
  boxes, labels = drop_degenerate(boxes, labels)
  return image, boxes, labels
