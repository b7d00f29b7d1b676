"""SSD training augmentation as the authors' released recipe runs it: the host's part, in TF ops.

The release (Caffe, ssd_pascal.py) distorts the colours of the decoded image,
places it on a mean-filled canvas up to 4x its size ("expand", the zoom-out of
SSD300*/SSD512*), crops a patch chosen by seven batch samplers, resizes it to
S x S with a random interpolation, and mirrors it. Here the geometry comes
first, the host never resamples, and the pixels are touched once, on the device:

  1. `sample_geometry`: the expand canvas and the sampled patch, composed into
     one window in source-image coordinates (it may reach outside the image),
     and which ground truth boxes the crop keeps (the centre rule);
  2. `place_window`: the window's visible part of the image at whole source
     pixels (the crop: all the host decodes) and its place in the S x S output
     at whole output pixels, and the effective window that rounding implies
     (boxes are projected onto it, so they agree with the pixels exactly);
  3. the draws: the interpolation (one of the release's five), the
     photometric distortion's values (`photometric_draws`) and the mirror;
  4. on the device (ssd_jax/pixels.py, inside the train step): the crop
     resized once into its place, distorted there, the rest of the output the
     mean pixel (as when distortion precedes expansion: the expanded canvas
     never exists), mirrored.

NVIDIA's SSD300-ResNet50 recipe swaps in its DALI pipeline's crop
(`sample_patch_dali`, augment.crop_style='dali') and colour jitter
(augment.photometric_style='dali'); the rest of the chain is the same.

Conventions: images uint8 [H, W, 3] RGB; boxes f32 [N, 4] normalised xyxy (N
varies); a window is f32 [4] xyxy in the source image's normalised
coordinates. Every random step takes a stateless seed (int [2]), so an
example's augmentation is a pure function of its seed.
"""
from __future__ import annotations

import tensorflow as tf

from ssd_jax import pixels

_split = tf.random.experimental.stateless_split

WHOLE = (0.0, 0.0, 1.0, 1.0)


def _uniform(seed, low=0.0, high=1.0, shape=()):
  return tf.random.stateless_uniform(shape, seed, low, high)


def _iou(patches, boxes):
  """f[..., 4] xyxy patches, f[N, 4] xyxy boxes -> f[..., N] IoU (same unit).

  The one IoU of the TensorFlow code (box_utils.pairwise_iou serves NumPy and JAX).
  """
  p, b = patches[..., None, :], boxes
  inter_wh = tf.maximum(tf.minimum(p[..., 2:], b[..., 2:]) - tf.maximum(p[..., :2], b[..., :2]),
                        0.0)
  inter = inter_wh[..., 0] * inter_wh[..., 1]
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
  return inter / tf.maximum(area(p) + area(b) - inter, 1e-12)


# --- geometry -------------------------------------------------------------------

def expand_canvas(height, width, seed, cfg):
  """The release's expand: f32 [4], the canvas in source-normalised xyxy.

  With probability cfg.zoom_out_prob, ratio r ~ U[1, cfg.zoom_out_max_ratio], a
  canvas of int(H r) x int(W r) pixels with the image at a random whole-pixel
  offset; else the image itself, (0, 0, 1, 1).
  """
  s = _split(seed, 4)
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)

  def expanded():
    ratio = _uniform(s[1], 1.0, cfg.zoom_out_max_ratio)
    canvas_h, canvas_w = tf.floor(h * ratio), tf.floor(w * ratio)
    top = tf.floor(_uniform(s[2], 0.0, canvas_h - h))
    left = tf.floor(_uniform(s[3], 0.0, canvas_w - w))
    return tf.stack([-left / w, -top / h, (canvas_w - left) / w, (canvas_h - top) / h])

  if not cfg.zoom_out:
    return tf.constant(WHOLE)
  return tf.cond(_uniform(s[0]) < cfg.zoom_out_prob, expanded, lambda: tf.constant(WHOLE))


def sampler_constraints(cfg) -> tuple[list[float], list[float]]:
  """(min IoU, max IoU) of the constrained samplers (besides "whole image"):
  one per cfg.crop_min_ious, then "any patch" (max IoU 1.0) if cfg.crop_any_patch."""
  mins = [float(m) for m in cfg.crop_min_ious] + ([-1.0] if cfg.crop_any_patch else [])
  maxs = [2.0] * len(cfg.crop_min_ious) + ([1.0] if cfg.crop_any_patch else [])
  return mins, maxs


def sample_patch(boxes, seed, cfg):
  """The release's batch sampling on one (expanded) image: f32 [4] normalised xyxy.

  The whole image always qualifies. Each constrained sampler draws up to
  cfg.crop_trials patches (scale s ~ U[cfg.crop_min_scale, 1], aspect ratio a
  ~ U[cfg.crop_aspect_range] clamped to [s^2, 1/s^2], width s sqrt(a), height
  s / sqrt(a), top-left uniform inside the image) and keeps the first whose
  IoU with ANY box lies within its [min, max]; an image without boxes
  satisfies none. One patch is chosen uniformly among those that qualified.

  Args:
    boxes: f32 [N, 4] normalised xyxy on the (expanded) image; project_boxes
      clips them to it, which leaves their IoU with any patch unchanged.
  """
  mins, maxs = sampler_constraints(cfg)
  k, t = len(mins), int(cfg.crop_trials)
  s = _split(seed, 5)
  scale = _uniform(s[0], cfg.crop_min_scale, 1.0, (k, t))
  aspect = _uniform(s[1], cfg.crop_aspect_range[0], cfg.crop_aspect_range[1], (k, t))
  aspect = tf.clip_by_value(aspect, tf.square(scale), 1.0 / tf.square(scale))
  w, h = scale * tf.sqrt(aspect), scale / tf.sqrt(aspect)
  x0, y0 = _uniform(s[2], shape=(k, t)) * (1.0 - w), _uniform(s[3], shape=(k, t)) * (1.0 - h)
  patches = tf.stack([x0, y0, x0 + w, y0 + h], -1)  # [K, T, 4]
  iou = _iou(patches, boxes)  # [K, T, N]
  lo, hi = tf.constant(mins)[:, None, None], tf.constant(maxs)[:, None, None]
  ok = tf.reduce_any((iou >= lo) & (iou <= hi), axis=-1)  # [K, T]; False when N = 0
  first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
  found = tf.reduce_any(ok, axis=1)
  chosen = tf.gather(patches, first, axis=1, batch_dims=1)  # [K, 4]
  candidates = tf.concat([tf.constant([WHOLE]), tf.boolean_mask(chosen, found)], 0)
  pick = tf.random.stateless_uniform((), s[4], 0, tf.shape(candidates)[0], tf.int32)
  return candidates[pick]


def sample_patch_dali(boxes, seed, cfg):
  """NVIDIA's crop (DALI's RandomBBoxCrop, num_attempts 1, allow_no_crop) on
  one image: f32 [4] normalised xyxy.

  Each round draws one option uniformly, the whole image or a threshold of
  cfg.crop_min_ious, and one patch: width and height each ~ U[cfg.crop_min_scale,
  1] of the image's, their ratio within cfg.crop_aspect_range, top-left
  uniform inside the image. The patch qualifies when EVERY box's IoU with it
  reaches the threshold and the centre of at least one box lies in it. DALI
  draws rounds until one succeeds; here the first success of cfg.crop_trials
  rounds is taken (the whole image if none: with 7 options and 50 rounds, a
  chance below (6/7)^50 = 5e-4). An image without boxes keeps its whole.
  """
  thresholds = tf.constant([float(m) for m in cfg.crop_min_ious])
  rounds = int(cfg.crop_trials)
  s = _split(seed, 5)
  option = tf.random.stateless_uniform((rounds,), s[0], 0, len(cfg.crop_min_ious) + 1, tf.int32)
  w = _uniform(s[1], cfg.crop_min_scale, 1.0, (rounds,))
  h = _uniform(s[2], cfg.crop_min_scale, 1.0, (rounds,))
  lo, hi = cfg.crop_aspect_range
  size = tf.stack([w, h], -1)
  corner = _uniform(s[3], shape=(rounds, 2)) * (1.0 - size)
  patches = tf.concat([corner, corner + size], -1)  # [R, 4]
  threshold = tf.gather(tf.concat([thresholds, [0.0]], 0), option)
  whole = option == len(cfg.crop_min_ious)
  ok = whole | ((w / h >= lo) & (w / h <= hi)
                & tf.reduce_any(centre_inside(boxes, patches), axis=-1)
                & tf.reduce_all(_iou(patches, boxes) >= threshold[:, None], axis=-1))
  first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
  take = tf.reduce_any(ok) & ~whole[first]
  return tf.where(take, patches[first], tf.constant(WHOLE))


def project_boxes(boxes, frame):
  """f32 [N, 4] boxes -> f32 [N, 4] boxes in the frame's normalised coordinates,
  clipped to it (boxes and frame normalised xyxy in the same coordinates)."""
  origin = tf.concat([frame[:2]] * 2, 0)
  size = tf.concat([frame[2:] - frame[:2]] * 2, 0)
  return tf.clip_by_value((boxes - origin) / size, 0.0, 1.0)


def positive(boxes):
  """bool [N]: boxes of positive width and height."""
  return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def centre_inside(boxes, frame):
  """bool [..., N]: the release's emit rule, each box's centre inside the frame
  (inclusive), for frames f32 [..., 4] (one frame: [4] -> [N])."""
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  return tf.reduce_all((centre >= frame[..., None, :2]) & (centre <= frame[..., None, 2:]),
                       axis=-1)


def sample_geometry(boxes, height, width, seed, cfg):
  """Expand, then batch sampling, composed into one window.

  Args:
    boxes: f32 [N, 4] normalised xyxy ground truth of the source image.
    height, width: the source image's size in pixels.

  Returns:
    window: f32 [4], the output's extent in source-normalised xyxy;
    boxes: f32 [N, 4] every box projected onto the window and clipped;
    keep: bool [N], the boxes the crop keeps: centre inside, positive size.
  """
  s = _split(seed, 2)
  boxes = tf.cast(boxes, tf.float32)
  canvas = expand_canvas(height, width, s[0], cfg)
  sampler = sample_patch_dali if cfg.crop_style == 'dali' else sample_patch
  patch = sampler(project_boxes(boxes, canvas), s[1], cfg) if cfg.crop else tf.constant(WHOLE)
  extent = tf.concat([canvas[2:] - canvas[:2]] * 2, 0)
  window = tf.concat([canvas[:2]] * 2, 0) + patch * extent
  projected = project_boxes(boxes, window)
  return window, projected, centre_inside(boxes, window) & positive(projected)


# --- pixels ---------------------------------------------------------------------

def place_window(window, height, width, size: int):
  """Where the window's view of the image goes in the size x size output.

  The window's visible part of the image is rounded to whole source pixels
  (crop) and its image in the output to whole output pixels (place).

  Returns:
    crop: i32 [4] y0, x0, y1, x1 source pixels (empty when nothing shows);
    place: i32 [4] y0, x0, y1, x1 output pixels;
    effective: f32 [4] the window, normalised xyxy, that maps crop exactly
      onto place (the window itself when nothing shows).
  """
  hw = tf.cast(tf.stack([height, width]), tf.float32)
  lo, hi = tf.stack([window[1], window[0]]) * hw, tf.stack([window[3], window[2]]) * hw
  scale = size / (hi - lo)  # output pixels per source pixel, (y, x)
  crop_lo = tf.round(tf.maximum(lo, 0.0))
  crop_hi = tf.maximum(tf.round(tf.minimum(hi, hw)), crop_lo)
  place_lo = tf.clip_by_value(tf.round((crop_lo - lo) * scale), 0.0, size)
  place_hi = tf.clip_by_value(tf.round((crop_hi - lo) * scale), place_lo, size)
  shows = tf.reduce_all((crop_hi > crop_lo) & (place_hi > place_lo))
  ratio = (crop_hi - crop_lo) / tf.maximum(place_hi - place_lo, 1.0)  # source px per output px
  first, last = (crop_lo - place_lo * ratio) / hw, (crop_lo + (size - place_lo) * ratio) / hw
  effective = tf.where(shows, tf.stack([first[1], first[0], last[1], last[0]]), window)
  crop = tf.cast(tf.concat([crop_lo, tf.where(shows, crop_hi, crop_lo)], 0), tf.int32)
  return crop, tf.cast(tf.concat([place_lo, place_hi], 0), tf.int32), effective


def photometric_draws(seed, cfg):
  """The photometric distortion of cfg.photometric_style, drawn: f32 [15] laid
  out as pixels.COLOUR_FIELDS (pixels.distort applies it on the device). All
  zeros when cfg.photometric is off.

  'release': brightness (+delta), then contrast (x alpha) either first or last
  (a fair coin), saturation (S x factor) and hue (rotated by delta on OpenCV's
  0..180 scale, i.e. 2 delta degrees) in between, then a channel permutation;
  each step with its own probability.
  'dali' (NVIDIA's SSD300): every image, hue and saturation as the release
  draws them, contrast from contrast_range and a brightness gain from
  brightness_range (pixels.dali_twist); the probabilities are not used.
  """
  if not cfg.photometric:
    return tf.zeros([len(pixels.COLOUR_FIELDS)])
  s = _split(seed, 11)
  p = cfg.photometric_prob
  flag = lambda k, prob=p: tf.cast(_uniform(s[k]) < prob, tf.float32)  # noqa: E731
  if cfg.channel_swap_prob > 0:
    swap = flag(10, cfg.channel_swap_prob)
    order = tf.cast(tf.random.experimental.stateless_shuffle(tf.range(3), s[9]), tf.float32)
  else:
    swap, order = tf.constant(0.0), tf.range(3.0)
  draws = {
      'brightness': flag(0), 'delta': _uniform(s[4], -cfg.brightness_delta, cfg.brightness_delta),
      'contrast': flag(1), 'alpha': _uniform(s[5], *cfg.contrast_range),
      'contrast_first': flag(8, 0.5), 'saturation': flag(2),
      'factor': _uniform(s[6], *cfg.saturation_range), 'hue': flag(3),
      'turn': _uniform(s[7], -cfg.hue_delta, cfg.hue_delta) / 180.0,  # of a full turn
      'swap': swap, 'order_0': order[0], 'order_1': order[1], 'order_2': order[2],
      'twist': tf.constant(0.0), 'gain': tf.constant(1.0)}
  if cfg.photometric_style == 'dali':
    draws = {name: tf.constant(0.0) for name in pixels.COLOUR_FIELDS} | {
        'alpha': draws['alpha'], 'factor': draws['factor'], 'turn': draws['turn'],
        'twist': tf.constant(1.0), 'gain': _uniform(s[4], *cfg.brightness_range)}
  return tf.stack([draws[name] for name in pixels.COLOUR_FIELDS])


def flip_boxes(boxes):
  """Boxes of the mirrored image (left-right): x -> 1 - x."""
  return tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], -1)


def drop_degenerate(boxes, labels, *others):
  """Clip to [0, 1] and drop boxes of zero width or height (and their other fields)."""
  boxes = tf.clip_by_value(boxes, 0.0, 1.0)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return (tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep),
          *(tf.boolean_mask(o, keep) for o in others))


def _method_id(name: str) -> int:
  return pixels.RESIZE_METHODS.index(name)


def train_augment(height, width, boxes, labels, seed, cfg, size: int):
  """The whole training chain but the pixels, for an image of height x width.

  Returns:
    crop: i32 [4] y0, x0, y1, x1, the source pixels the output shows (decode
      only these; empty when nothing shows);
    finish: dict of place i32 [4], method i32, colour f32 [15] and flip bool,
      the rest of pixels.FINISH_FIELDS (see pixels.py);
    boxes: f32 [K, 4] the boxes the crop kept, normalised xyxy on the output
      (mirrored when flip is); labels: i32 [K] theirs;
    geometry: dict of the geometry before any mirroring: 'window' (sampled)
      and 'effective' f32 [4] source-normalised xyxy, 'place' as above.
  """
  s = _split(seed, 5)
  window, _, keep = sample_geometry(boxes, height, width, s[0], cfg)
  crop, place, effective = place_window(window, height, width, size)
  boxes = project_boxes(tf.cast(boxes, tf.float32), effective)
  keep &= positive(boxes)
  boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
  ids = tf.constant([_method_id(m) for m in cfg.resize_methods], tf.int32)
  method = ids[tf.random.stateless_uniform((), s[1], 0, len(cfg.resize_methods), tf.int32)]
  flipped = (_uniform(s[3]) < cfg.flip_prob) if cfg.flip else tf.constant(False)
  boxes = tf.cond(flipped, lambda: flip_boxes(boxes), lambda: boxes)
  finish = {'place': place, 'method': method, 'colour': photometric_draws(s[2], cfg),
            'flip': flipped}
  return crop, finish, boxes, labels, {'window': window, 'effective': effective, 'place': place}


def resize_only(height, width, size: int):
  """(crop, finish) of training without augmentation: the whole image, bilinear."""
  crop = tf.stack([0, 0, tf.cast(height, tf.int32), tf.cast(width, tf.int32)])
  finish = {'place': tf.constant([0, 0, size, size]),
            'method': tf.constant(_method_id('bilinear')),
            'colour': tf.zeros([len(pixels.COLOUR_FIELDS)]), 'flip': tf.constant(False)}
  return crop, finish


def to_buffer(part, crop, place, buffer: int, method):
  """The decoded crop, u8 [h, w, 3], made to fit the fixed-size buffer the
  device finishes: (pixels u8 [h', w', 3] with h', w' <= buffer, pixels_size
  i32 [2]); batching pads it to [buffer, buffer, 3] (input_pipeline: one copy
  per image, where padding here would cost a second).

  A crop taller or wider than the buffer, or more than pixels.MAX_SHRINKS[method]
  times its place (i32 [4] y0, x0, y1, x1; method the i32 RESIZE_METHODS index
  the device resamples it with), is first shrunk on the host to the
  limit on that side (an area resize, the only resampling left on the host;
  it happens only for images larger than the buffer, or zoomed out near 4x).
  An empty crop (nothing shows) has size (0, 0).
  """
  hw = tf.shape(part)[:2]
  shrink = tf.gather(tf.constant(pixels.MAX_SHRINKS, tf.int32), method)
  limit = tf.minimum(buffer, shrink * tf.maximum(place[2:] - place[:2], 1))
  target = tf.minimum(hw, limit)
  part = tf.cond(tf.reduce_all(hw == target), lambda: part, lambda: tf.cast(
      tf.round(tf.image.resize(part, target, 'area')), tf.uint8))
  empty = tf.reduce_any(crop[2:] <= crop[:2])
  return part, tf.where(empty, tf.zeros([2], tf.int32), tf.shape(part)[:2])
