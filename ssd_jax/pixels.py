"""The training pixel work, on the device, batched inside the jitted step (no TensorFlow).

The host (data/augment.py, data/input_pipeline.py) samples each training
image's geometry and photometric draws, decodes only the part of the image the
output shows (the crop), and ships it in a fixed-size buffer. `finish` then
does the work that was most of the host's CPU time per image (bench_input),
where an accelerator has it beside the model:

  1. resample the crop into its place in the S x S output with the drawn
     interpolation, computed as tf.image.resize computes each of the release's
     five, or as DALI's triangular filter (per axis, each output pixel reads
     TAPS source pixels);
  2. the photometric distortion with the drawn values (the release's steps, or
     DALI's colour twist as NVIDIA's SSD300 trains with it), on the resampled
     pixels only; the rest of the output is the mean pixel, as when distortion
     precedes the release's expand;
  3. mirror, and round to whole pixel values (the release distorts 8-bit images).

Batch fields (b images, P = data.pixel_buffer, S = model.image_size):
  pixels       u8 [b, P, P, 3]  the crop at rows [0, h), columns [0, w); zeros beyond
  pixels_size  i32 [b, 2]       h, w (0, 0 when nothing of the image shows)
  place        i32 [b, 4]       y0, x0, y1, x1 output pixels the crop fills
  method       i32 [b]          index into RESIZE_METHODS
  colour       f32 [b, 15]      the photometric draws, laid out as COLOUR_FIELDS
                                (flags are 0 or 1; all zeros: no distortion)
  flip         bool [b]         mirror left-right
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Mean pixel of the ImageNet-pretrained VGG16 (RGB): what the paper's recipe subtracts
# from its inputs and fills zoom-out canvases with (config data.mean_rgb by default).
MEAN_RGB = (123.0, 117.0, 104.0)

# The release's OpenCV LINEAR, AREA, NEAREST, CUBIC and LANCZOS4, by
# tf.image.resize's names (no TF Lanczos-4: Lanczos-3 stands in): what the
# paper's recipe draws from (augment.resize_methods' default).
RELEASE_RESIZE_METHODS = ('bilinear', 'area', 'nearest', 'bicubic', 'lanczos3')
# The one list of the interpolations training may draw (augment.resize_methods):
# the release's, then DALI's Resize with min_filter=INTERP_TRIANGULAR, as NVIDIA's
# SSD300 trains: per axis a triangle whose half-width is the shrink (in / out
# pixels; 1, plain bilinear, when enlarging), its weights normalised over the
# source pixels it covers, edge pixels repeated beyond the image.
RESIZE_METHODS = RELEASE_RESIZE_METHODS + ('triangular',)
FINISH_FIELDS = ('pixels', 'pixels_size', 'place', 'method', 'colour', 'flip')
# The photometric distortions training may use (augment.photometric_style): the
# release's steps, or the linear colour twist of NVIDIA's DALI pipeline.
PHOTOMETRIC_STYLES = ('release', 'dali')
COLOUR_FIELDS = ('brightness', 'delta', 'contrast', 'alpha', 'contrast_first', 'saturation',
                 'factor', 'hue', 'turn', 'swap', 'order_0', 'order_1', 'order_2',
                 'twist', 'gain')
_C = {name: k for k, name in enumerate(COLOUR_FIELDS)}
# DALI's RGB <-> YIQ matrices (its colour operators' constants; the second is
# DALI's rounded inverse of the first, used as DALI uses it).
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321],
                        [0.211, -0.523, 0.311]], np.float32)
_YIQ_TO_RGB = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]],
                       np.float32)
_BICUBIC_TABLE = 1024  # TF's bicubic reads its weights from a table of 1/1024 pixel steps


def _keys_cubic(d):
  """Keys' cubic kernel with a = -0.5 (TF's half-pixel bicubic) at distance d >= 0."""
  near = (1.5 * d - 2.5) * d * d + 1.0
  far = ((-0.5 * d + 2.5) * d - 4.0) * d + 2.0
  return jnp.where(d <= 1.0, near, jnp.where(d < 2.0, far, 0.0))


def _lanczos3(x):
  """TF's Lanczos kernel of radius 3."""
  x = jnp.abs(x)
  safe = jnp.maximum(x, 1e-3)
  value = 3.0 * jnp.sin(jnp.pi * safe) * jnp.sin(jnp.pi * safe / 3.0) / (jnp.pi * safe) ** 2
  return jnp.where(x <= 1e-3, 1.0, jnp.where(x < 3.0, value, 0.0))


def _normalised(w, valid):
  w = jnp.where(valid, w, 0.0)
  total = w.sum(-1, keepdims=True)
  return jnp.where(jnp.abs(total) > 1e-30, w / jnp.where(total == 0, 1.0, total), 0.0)


# Source pixels one output pixel reads, per axis: Lanczos-3 reads 7 at most,
# and 'area' ceil(scale) + 1, so a crop may be at most MAX_SHRINK times its
# place; 'triangular' reads 2 x scale, so at most TAPS / 2 times (the host
# shrinks one that is more; augment.to_buffer). Per RESIZE_METHODS entry:
TAPS = 8
MAX_SHRINK = TAPS - 1
MAX_SHRINKS = tuple(TAPS // 2 if m == 'triangular' else MAX_SHRINK for m in RESIZE_METHODS)


def axis_taps(n, lo, hi, method, size: int) -> tuple[jax.Array, jax.Array]:
  """Along one axis, which source pixels each output pixel reads and with what
  weight, for n source pixels resized onto outputs [lo, hi) with
  RESIZE_METHODS[method], as tf.image.resize computes them (half-pixel
  centres; no antialiasing but 'area''s box), 'triangular' as DALI does (see
  RESIZE_METHODS). Outputs outside [lo, hi) read nothing.

  n, lo, hi, method: i32 scalars (traced); n / (hi - lo) <= MAX_SHRINKS[method].
  Returns: (index i32 [size, TAPS] in [0, n), weight f32 [size, TAPS]).
  """
  f32 = jnp.float32
  n_f, m = n.astype(f32), (hi - lo).astype(f32)
  scale = n_f / jnp.maximum(m, 1.0)  # source pixels per output pixel
  t = jnp.arange(size, dtype=f32)[:, None] - lo.astype(f32)  # output pixel, from lo
  centre = (t + 0.5) * scale  # the output pixel's centre in source pixels
  first, last = t * scale, (t + 1.0) * scale  # its extent, for 'area'
  linear_at = jnp.clip(centre - 0.5, 0.0, n_f - 1.0)
  nearest_at = jnp.minimum(jnp.floor(centre), n_f - 1.0)
  start = jnp.floor(centre - 0.5)
  cubic_at = start + jnp.round((centre - 0.5 - start) * _BICUBIC_TABLE) / _BICUBIC_TABLE
  radius = jnp.maximum(scale, 1.0)  # 'triangular''s half-width
  base = jnp.stack([jnp.floor(linear_at), jnp.floor(first), nearest_at, start - 1.0,
                    jnp.ceil(centre - 3.5),
                    jnp.floor(centre - 0.5 - radius) + 1.0])[method]  # each method's first tap
  i = base + jnp.arange(TAPS, dtype=f32)  # [size, TAPS] source pixels
  valid = (i >= 0) & (i < n_f)
  box = jnp.where(i < first, jnp.where(i + 1.0 > last, scale, i + 1.0 - first),
                  jnp.where(i + 1.0 > last, last - i, 1.0))
  box = jnp.where((i + 1.0 > first) & (i < last), box, 0.0)
  weights = jnp.stack([
      jnp.where(valid, jnp.maximum(0.0, 1.0 - jnp.abs(i - linear_at)), 0.0),
      jnp.where(valid, box / jnp.maximum(scale, 1e-30), 0.0),
      jnp.where(valid & (i == nearest_at), 1.0, 0.0),
      _normalised(_keys_cubic(jnp.abs(i - cubic_at)), valid),
      _normalised(_lanczos3(i + 0.5 - centre), valid),
      _normalised(jnp.maximum(0.0, 1.0 - jnp.abs(i + 0.5 - centre) / radius),
                  jnp.ones_like(valid)),  # beyond the edge: the edge pixel (index clipped)
  ])[method]
  inside = (t >= 0) & (t < m) & (n > 0)
  index = jnp.clip(i, 0, jnp.maximum(n_f - 1.0, 0.0)).astype(jnp.int32)
  return index, jnp.where(inside, weights, 0.0)


def resample(pixels, pixels_size, place, method, size: int) -> jax.Array:
  """u8 [P, Q, 3] buffer -> f32 [size, size, 3]: its top-left pixels_size pixels
  resized onto place (y0, x0, y1, x1), clipped to [0, 255]; zeros elsewhere.
  Rows, then columns: each output pixel a weighted sum of TAPS source pixels."""
  rows, row_w = axis_taps(pixels_size[0], place[0], place[2], method, size)
  cols, col_w = axis_taps(pixels_size[1], place[1], place[3], method, size)
  highest = jax.lax.Precision.HIGHEST
  x = jnp.take(pixels, rows, axis=0).astype(jnp.float32)  # [S, TAPS, Q, 3]: whole rows
  x = jnp.einsum('yt,ytqc->qyc', row_w, x, precision=highest)  # [Q, S, 3], columns first
  x = jnp.take(x, cols, axis=0)  # [S, TAPS, S, 3]: whole (transposed) columns
  x = jnp.einsum('xt,xtyc->yxc', col_w, x, precision=highest)
  return jnp.clip(x, 0.0, 255.0)


def rgb_to_hsv(rgb):
  """f32 [..., 3] RGB in [0, 1] -> HSV in [0, 1], as tf.image.rgb_to_hsv."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, -1)
  spread = value - jnp.min(rgb, -1)
  saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1.0), 0.0)
  norm = 1.0 / (6.0 * jnp.where(spread > 0, spread, 1.0))
  hue = jnp.where(r == value, norm * (g - b),
                  jnp.where(g == value, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0))
  hue = jnp.where(spread > 0, hue, 0.0)
  return jnp.stack([jnp.where(hue < 0, hue + 1.0, hue), saturation, value], -1)


def hsv_to_rgb(hsv):
  """f32 [..., 3] HSV in [0, 1] -> RGB in [0, 1], as tf.image.hsv_to_rgb."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  dh = h * 6.0
  dr = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
  dg = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
  db = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
  return jnp.stack([(1.0 - s + s * d) * v for d in (dr, dg, db)], -1)


def distort(x, colour) -> jax.Array:
  """f32 [..., 3] pixels in [0, 255] distorted with one image's draws (f32 [15],
  COLOUR_FIELDS; data/augment.py draws them): DALI's colour twist where the
  'twist' flag is 1 (dali_twist), else the release's steps (release_distort)."""
  return jax.lax.cond(colour[_C['twist']] > 0.5, dali_twist, release_distort, x, colour)


def release_distort(x, colour) -> jax.Array:
  """The release's photometric distortion of f32 [..., 3] pixels in [0, 255].

  Brightness (+delta), then contrast (x alpha) first or last, saturation (x
  factor) and hue (+turn, of a full turn) between, then the channels in the
  drawn order; each step only where its flag is 1, pixels clipped to [0, 255]
  after each.
  """
  on = lambda name: colour[_C[name]] > 0.5  # noqa: E731
  get = lambda name: colour[_C[name]]  # noqa: E731
  clip = lambda v: jnp.clip(v, 0.0, 255.0)  # noqa: E731
  x = jnp.where(on('brightness'), clip(x + get('delta')), x)
  x = jnp.where(on('contrast') & on('contrast_first'), clip(x * get('alpha')), x)

  def coloured(x):  # saturation and hue, in one HSV round trip
    hsv = rgb_to_hsv(x * (1.0 / 255.0))
    hue = jnp.mod(hsv[..., 0] + jnp.where(on('hue'), get('turn'), 0.0), 1.0)
    sat = jnp.minimum(hsv[..., 1] * jnp.where(on('saturation'), get('factor'), 1.0), 1.0)
    return clip(hsv_to_rgb(jnp.stack([hue, sat, hsv[..., 2]], -1)) * 255.0)

  # A branch: per image (lax.map, see finish) an undrawn step costs nothing.
  x = jax.lax.cond(on('saturation') | on('hue'), coloured, lambda x: x, x)
  x = jnp.where(on('contrast') & ~on('contrast_first'), clip(x * get('alpha')), x)
  order = colour[_C['order_0']:_C['order_2'] + 1].astype(jnp.int32)
  return jnp.where(on('swap'), jnp.take(x, order, axis=-1), x)


def twist_matrix(turn, saturation) -> jax.Array:
  """f32 [3, 3]: DALI's Hsv operator on RGB column vectors, a rotation of the IQ
  plane of YIQ by `turn` (of a full turn) and a scaling of it by `saturation`."""
  angle = turn * 2.0 * jnp.pi
  cos, sin = jnp.cos(angle) * saturation, jnp.sin(angle) * saturation
  iq = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, sin], [0.0, -sin, cos]])
  return jnp.asarray(_YIQ_TO_RGB) @ iq @ jnp.asarray(_RGB_TO_YIQ)


def dali_twist(x, colour) -> jax.Array:
  """NVIDIA's SSD300 colour jitter of f32 [..., 3] pixels in [0, 255], as their
  DALI pipeline applies it: Hsv (hue +turn, saturation x factor) kept in float,
  then BrightnessContrast around 128, gain x (128 + alpha x (v - 128)),
  clipped to [0, 255] (finish rounds to whole values, as its uint8 output)."""
  get = lambda name: colour[_C[name]]  # noqa: E731
  v = jnp.einsum('ij,...j->...i', twist_matrix(get('turn'), get('factor')), x,
                 precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(get('gain') * (128.0 + get('alpha') * (v - 128.0)), 0.0, 255.0)


def finish_one(pixels, pixels_size, place, method, colour, flip, size: int, mean_rgb):
  """One image's fields (module docstring) -> f32 [size, size, 3] whole pixel values."""
  x = distort(resample(pixels, pixels_size, place, method, size), colour)
  o = jnp.arange(size)
  rows = (o >= place[0]) & (o < place[2])
  cols = (o >= place[1]) & (o < place[3])
  shows = (pixels_size[0] > 0) & (pixels_size[1] > 0)
  inside = rows[:, None, None] & cols[None, :, None] & shows
  x = jnp.where(inside, x, jnp.asarray(mean_rgb, jnp.float32))
  x = jnp.where(flip, x[:, ::-1], x)
  return jnp.round(jnp.clip(x, 0.0, 255.0))


def finish(batch: dict, size: int, mean_rgb, per_image: bool | None = None) -> jax.Array:
  """The batch's FINISH_FIELDS -> f32 [b, size, size, 3] RGB training images,
  whole values in [0, 255].

  per_image: one image after another (lax.map), or the batch at once (vmap).
  None picks by platform when compiled: per image on CPU (XLA:CPU gathers
  whole rows fast, and undrawn colour steps are skipped: 2-3x less time),
  batched elsewhere (one kernel over the batch on GPUs and TPUs).
  """
  one = functools.partial(finish_one, size=size, mean_rgb=tuple(float(m) for m in mean_rgb))
  fields = tuple(jnp.asarray(batch[k]) for k in FINISH_FIELDS)
  mapped = lambda *f: jax.lax.map(lambda f: one(*f), f)  # noqa: E731
  batched = jax.vmap(one)
  if per_image is not None:
    return (mapped if per_image else batched)(*fields)
  return jax.lax.platform_dependent(*fields, cpu=mapped, default=batched)


def finish_compiled(batch: dict, size: int, mean_rgb) -> jax.Array:
  """`finish`, compiled once per size and mean, for single batches looked at on the
  host (eager, it dispatches op by op: about 0.2 s an image). Fields other than
  FINISH_FIELDS (a pipeline batch's names, boxes) are left out; arrays of any
  framework are read as NumPy."""
  fields = {k: np.asarray(batch[k]) for k in FINISH_FIELDS}
  return _finish_compiled(fields, size, tuple(float(m) for m in mean_rgb))


_finish_compiled = jax.jit(finish, static_argnums=(1, 2))


def multiply_adds_per_image(size: int, buffer: int) -> int:
  """Multiply-adds of one image's resample (rows, then columns), the bulk of finish."""
  return int(np.int64(size) * TAPS * buffer * 3 + np.int64(size) * size * TAPS * 3)
