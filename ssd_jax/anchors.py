"""SSD default boxes ("anchors"), computed once on the host with NumPy.

Order (the same as the flattened head outputs, see `models.heads`):
source layer, then row i, then column j, then the boxes of one location:
  1. ratio 1 at size s_k,
  2. ratio 1 at size sqrt(s_k * s_{k+1})  (only when max sizes are given),
  3. for each aspect ratio r: (w, h) = (s_k sqrt(r), s_k / sqrt(r)), then (h, w).
All sizes here are in pixels of the square network input; the returned boxes are
normalised to [0, 1] by the input size.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ssd_jax import box_utils


def boxes_per_location(aspect_ratios: Sequence[float], with_max_size: bool = True) -> int:
  """Number of default boxes per cell of one source layer."""
  return 1 + int(with_max_size) + 2 * len(aspect_ratios)


def sizes_from_scales(
    image_size: int,
    num_layers: int,
    s_min: float = 0.2,
    s_max: float = 0.9,
    first_scale: Optional[float] = 0.1,
) -> tuple[list[float], list[float]]:
  """The paper's scale rule, in pixels: s_k = s_min + (s_max - s_min)(k - 1)/(m - 1).

  With `first_scale` set (the paper uses 0.1 for conv4_3), the first layer takes
  that scale and the rule spans the remaining layers. The max size of layer k is
  the min size of layer k + 1; the last layer's extends the rule one step.

  Returns:
    (min_sizes, max_sizes), pixel sizes, one per layer.
  """
  if num_layers < 1:
    raise ValueError(f'num_layers must be >= 1, got {num_layers}.')
  ruled = num_layers - 1 if first_scale is not None else num_layers
  scales = list(np.linspace(s_min, s_max, ruled)) if ruled > 0 else []
  step = (s_max - s_min) / (ruled - 1) if ruled > 1 else s_max - s_min
  if first_scale is not None:
    scales = [first_scale] + scales
  following = scales[1:] + [(scales[-1] if ruled else first_scale) + step]
  return ([float(s * image_size) for s in scales],
          [float(s * image_size) for s in following])


def _layer_boxes(fmap: int, image_size: int, step: float, min_size: float,
                 max_size: Optional[float], ratios: Sequence[float]) -> np.ndarray:
  """f64[fmap * fmap * k, 4] normalised cxcywh boxes of one source layer."""
  sizes = [(min_size, min_size)]
  if max_size is not None:
    prime = math.sqrt(min_size * max_size)
    sizes.append((prime, prime))
  for r in ratios:
    w, h = min_size * math.sqrt(r), min_size / math.sqrt(r)
    sizes += [(w, h), (h, w)]
  wh = np.asarray(sizes, np.float64) / image_size  # [k, 2]
  centres = (np.arange(fmap, dtype=np.float64) + 0.5) * step / image_size
  cy, cx = np.meshgrid(centres, centres, indexing='ij')  # [fmap, fmap]
  cxcy = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)  # [fmap^2, 1, 2]
  cxcy = np.broadcast_to(cxcy, (cxcy.shape[0], len(sizes), 2))
  wh = np.broadcast_to(wh[None], cxcy.shape)
  return np.concatenate([cxcy, wh], axis=-1).reshape(-1, 4)


def default_boxes(
    image_size: int,
    feature_sizes: Sequence[int],
    min_sizes: Sequence[float],
    max_sizes: Optional[Sequence[float]],
    aspect_ratios: Sequence[Sequence[float]],
    steps: Optional[Sequence[float]] = None,
    clip: str = 'none',
) -> np.ndarray:
  """All default boxes of the network.

  Args:
    image_size: side of the square network input, pixels.
    feature_sizes: side of each source feature map.
    min_sizes: s_k per source, pixels.
    max_sizes: s_{k+1} per source, pixels, or None for no sqrt(s_k s_{k+1}) box.
    aspect_ratios: the ratios r > 1 per source (each also gives 1/r).
    steps: pixel stride of each source's cells; None means image_size / feature_size.
    clip: one of CLIP_MODES: 'none' (the paper's recipe), 'wh' (clamp w and h
      to [0, 1], torchvision's), 'cxcywh' (clamp all four, ssd.pytorch's) or
      'xyxy' (clamp the corners to the image, the original Caffe PriorBox's).

  Returns:
    f32[A, 4] normalised cxcywh, A = sum(feature_size^2 * boxes_per_location).
  """
  n = len(feature_sizes)
  steps = [image_size / f for f in feature_sizes] if steps is None else steps
  lists = {'min_sizes': min_sizes, 'aspect_ratios': aspect_ratios, 'steps': steps}
  if max_sizes is not None:
    lists['max_sizes'] = max_sizes
  for name, values in lists.items():
    if len(values) != n:
      raise ValueError(
          f'anchors.{name} has {len(values)} entries but the model has {n} source '
          f'layers (feature sizes {list(feature_sizes)}); give one entry per source.')
  boxes = [
      _layer_boxes(feature_sizes[i], image_size, steps[i], min_sizes[i],
                   None if max_sizes is None else max_sizes[i], aspect_ratios[i])
      for i in range(n)
  ]
  return clip_boxes(np.concatenate(boxes, axis=0), clip).astype(np.float32)


CLIP_MODES = ('none', 'wh', 'cxcywh', 'xyxy')


def clip_boxes(boxes: np.ndarray, mode: str) -> np.ndarray:
  """f[A, 4] normalised cxcywh default boxes clamped as `mode` says (see default_boxes)."""
  if mode not in CLIP_MODES:
    raise ValueError(f'anchors.clip={mode!r} is not one of {CLIP_MODES}.')
  if mode == 'wh':
    return np.concatenate([boxes[:, :2], np.clip(boxes[:, 2:], 0.0, 1.0)], axis=1)
  if mode == 'cxcywh':
    return np.clip(boxes, 0.0, 1.0)
  if mode == 'xyxy':
    return box_utils.xyxy_to_cxcywh(np.clip(box_utils.cxcywh_to_xyxy(boxes), 0.0, 1.0))
  return boxes
