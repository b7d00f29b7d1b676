"""Comparing two detectors' detections of one image, as a matching, not a zip.

A detection list is a dict like Detector.detect's: boxes f32[N, 4] (pixels,
xyxy), scores f32[N], classes i32[N], best first. Near-equal scores may come
in either order from two implementations, so each detection looks for a
partner anywhere in the other list.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def from_coco_results(results: list, image_id) -> dict:
  """The detections of one image in a COCO results list (what --mode=predict
  writes: bbox as x, y, w, h pixels) -> boxes f[N, 4] xyxy, scores, classes
  (its category ids)."""
  mine = [d for d in results if d['image_id'] == image_id]
  x, y, w, h = np.array([d['bbox'] for d in mine], np.float64).reshape(-1, 4).T
  return {'boxes': np.stack([x, y, x + w, y + h], 1),
          'scores': np.array([d['score'] for d in mine]),
          'classes': np.array([d['category_id'] for d in mine])}


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of one xyxy box f[4] with each of boxes f[N, 4] -> f[N]."""
  lo = np.maximum(box[:2], boxes[:, :2])
  hi = np.minimum(box[2:], boxes[:, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
  union = _area(box) + _area(boxes) - inter
  return inter / np.maximum(union, 1e-12)


def _area(boxes: np.ndarray) -> np.ndarray:
  """Areas of xyxy boxes f[..., 4] -> f[...] (0 for inverted boxes)."""
  return np.prod(np.clip(boxes[..., 2:] - boxes[..., :2], 0, None), axis=-1)


def has_partner(a: dict, b: dict, score_tol: float, box_tol: Optional[float] = None,
                min_iou: Optional[float] = None) -> np.ndarray:
  """bool[N_a]: detection i of `a` has one in `b` of the same class, its score
  within score_tol and its box within box_tol pixels (every coordinate) or, with
  min_iou, overlapping it with IoU >= min_iou."""
  found = np.zeros(len(a['scores']), bool)
  for i, (box, score, cls) in enumerate(zip(a['boxes'], a['scores'], a['classes'])):
    near = (b['classes'] == cls) & (np.abs(b['scores'] - score) <= score_tol)
    if min_iou is None:
      near &= np.all(np.abs(b['boxes'] - box) <= box_tol, axis=1)
    else:
      near &= iou(np.asarray(box), np.asarray(b['boxes']).reshape(-1, 4)) >= min_iou
    found[i] = near.any()
  return found


def unmatched(a: dict, b: dict, score_tol: float, box_tol: float) -> list[str]:
  """Detections of `a` with no partner in `b` (see has_partner), described, and
  the same from b to a. Exempt: those within score_tol of the lowest score either
  list kept, where the two may cut a tie (at max_detections or the score
  threshold) differently."""
  if not len(a['scores']) or not len(b['scores']):
    return [] if len(a['scores']) == len(b['scores']) else [
        f'{len(a["scores"])} detections against {len(b["scores"])}']
  cut = max(a['scores'].min(), b['scores'].min()) + score_tol
  lost = []
  for x, y, name in ((a, b, 'first'), (b, a, 'second')):
    above = x['scores'] > cut
    found = has_partner(x, y, score_tol, box_tol)
    lost += [f'{name} list: class {c} score {s:.6f} box {np.round(bx, 2).tolist()}'
             for bx, s, c, ok, up in zip(x['boxes'], x['scores'], x['classes'], found, above)
             if up and not ok]
  return lost
