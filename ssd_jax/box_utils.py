"""Box utilities shared by NumPy (host) and jax.numpy (device) code.

Every function picks its array module from its inputs: NumPy arrays in, NumPy
out; JAX arrays (or tracers inside `jit`) in, JAX out. Nothing here assumes a
unit: boxes may be normalised to [0, 1] or in pixels, as long as all inputs
to one call agree.

Conventions:
  xyxy:   (x_min, y_min, x_max, y_max)
  cxcywh: (centre_x, centre_y, width, height)
Coordinates always come last, in a trailing axis of size 4.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Variances of the SSD box coding (centre, size), from the paper's recipe.
DEFAULT_VARIANCES = (0.1, 0.2)

# Largest log size ratio `decode` applies (a box at most 62.5x its default box
# per side), as torchvision's box coder clamps: untrained or diverging heads
# then give large boxes rather than inf or NaN. Trained heads never reach it.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def array_module(*arrays):
  """Returns `jnp` if any input is a JAX array or tracer, else `np`."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def xyxy_to_cxcywh(boxes):
  """f[..., 4] xyxy -> f[..., 4] cxcywh (same unit)."""
  xp = array_module(boxes)
  mins, maxs = boxes[..., :2], boxes[..., 2:]
  return xp.concatenate([(mins + maxs) / 2, maxs - mins], axis=-1)


def cxcywh_to_xyxy(boxes):
  """f[..., 4] cxcywh -> f[..., 4] xyxy (same unit)."""
  xp = array_module(boxes)
  centres, half = boxes[..., :2], boxes[..., 2:] / 2
  return xp.concatenate([centres - half, centres + half], axis=-1)


def area(boxes):
  """f[..., 4] xyxy -> f[...] area; inverted boxes count as zero area."""
  xp = array_module(boxes)
  sides = xp.maximum(boxes[..., 2:] - boxes[..., :2], 0)
  return sides[..., 0] * sides[..., 1]


def pairwise_iou(boxes_a, boxes_b):
  """Jaccard overlap of every box in `a` with every box in `b`.

  Args:
    boxes_a: f[..., N, 4] xyxy.
    boxes_b: f[..., M, 4] xyxy, same unit and leading axes as `boxes_a`.

  Returns:
    f[..., N, M]. A pair whose union is empty (two zero-area boxes) has IoU 0,
    so padding boxes of zeros never match anything. Gradients stay finite.
  """
  xp = array_module(boxes_a, boxes_b)
  a = boxes_a[..., :, None, :]
  b = boxes_b[..., None, :, :]
  top_left = xp.maximum(a[..., :2], b[..., :2])
  bottom_right = xp.minimum(a[..., 2:], b[..., 2:])
  inter_sides = xp.maximum(bottom_right - top_left, 0)
  inter = inter_sides[..., 0] * inter_sides[..., 1]
  union = area(boxes_a)[..., :, None] + area(boxes_b)[..., None, :] - inter
  positive = union > 0
  return xp.where(positive, inter / xp.where(positive, union, 1), 0)


def encode(boxes, anchors, variances: Sequence[float] = DEFAULT_VARIANCES):
  """SSD box coding: regression targets of `boxes` relative to `anchors`.

  t_cx = (g_cx - d_cx) / (v0 d_w), t_cy likewise,
  t_w = log(g_w / d_w) / v1, t_h likewise.

  Args:
    boxes: f[..., 4] xyxy ground truth, positive width and height.
    anchors: f[..., 4] cxcywh default boxes, same unit as `boxes`, broadcastable.
    variances: (centre variance, size variance).

  Returns:
    f[..., 4] offsets (t_cx, t_cy, t_w, t_h).
  """
  xp = array_module(boxes, anchors)
  g = xyxy_to_cxcywh(boxes)
  centre = (g[..., :2] - anchors[..., :2]) / (variances[0] * anchors[..., 2:])
  size = xp.log(g[..., 2:] / anchors[..., 2:]) / variances[1]
  return xp.concatenate([centre, size], axis=-1)


def decode(offsets, anchors, variances: Sequence[float] = DEFAULT_VARIANCES):
  """Inverse of `encode`: f[..., 4] offsets + f[..., 4] cxcywh anchors -> xyxy.

  The log size ratio is clamped at MAX_LOG_SCALE.
  """
  xp = array_module(offsets, anchors)
  centre = anchors[..., :2] + offsets[..., :2] * variances[0] * anchors[..., 2:]
  size = anchors[..., 2:] * xp.exp(xp.minimum(offsets[..., 2:] * variances[1], MAX_LOG_SCALE))
  return cxcywh_to_xyxy(xp.concatenate([centre, size], axis=-1))
