"""Detection metrics on the host, in NumPy: PASCAL VOC AP and COCO (pycocotools).

Inputs are per image, in pixels, xyxy:
  ground truth: dict(boxes f[N, 4], labels i[N] model classes, difficult bool[N])
  detections:   dict(boxes f[D, 4], scores f[D], classes i[D] model classes)
keyed by image id, so every image counts once however many hosts read it.
"""
from __future__ import annotations

import contextlib
import io
from typing import Mapping, Sequence

import numpy as np

from ssd_jax import box_utils

COCO_METRIC_NAMES = (
    'AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large',
    'AR1', 'AR10', 'AR100', 'AR_small', 'AR_medium', 'AR_large')


def voc_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of one f[4] box with f[N, 4] boxes, pixels xyxy, with the VOC devkit's
  inclusive pixel convention (a box from x0 to x1 is x1 - x0 + 1 wide): the
  plain IoU of the boxes with their far corners moved one pixel out."""
  inclusive = np.array([0, 0, 1, 1], np.float64)
  return box_utils.pairwise_iou(np.asarray(box, np.float64)[None] + inclusive,
                                np.asarray(boxes, np.float64) + inclusive)[0]


def voc_match(image_ids: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
              truths: Mapping, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """True and false positives of one class's detections, the VOC devkit's rule.

  Detections are taken best score first (ties in input order). One with IoU
  >= iou_threshold to its best ground truth (VOCevaldet.m's ovmax >= minoverlap,
  with inclusive pixel sizes) is a true positive if that truth
  is not difficult and not yet taken, a false positive (duplicate) if taken,
  and ignored if difficult; below the threshold it is a false positive.

  Args:
    image_ids: [D] image of each detection; scores: f[D]; boxes: f[D, 4].
    truths: image_id -> (boxes f[N, 4], difficult bool[N]) of that class.

  Returns:
    (tp, fp): f[D] each, in descending score order.
  """
  order = np.argsort(-np.asarray(scores), kind='stable')
  tp, fp = np.zeros(len(order)), np.zeros(len(order))
  taken = {k: np.zeros(len(v[0]), bool) for k, v in truths.items()}
  for rank, i in enumerate(order):
    gt_boxes, difficult = truths.get(image_ids[i], (np.zeros((0, 4)), np.zeros(0, bool)))
    if not len(gt_boxes):
      fp[rank] = 1
      continue
    overlaps = voc_iou(np.asarray(boxes[i], np.float64), np.asarray(gt_boxes, np.float64))
    best = int(np.argmax(overlaps))
    if overlaps[best] < iou_threshold:
      fp[rank] = 1
    elif not difficult[best]:
      tp[rank], fp[rank] = (0, 1) if taken[image_ids[i]][best] else (1, 0)
      taken[image_ids[i]][best] = True
  return tp, fp


def _flatten(detections: Mapping) -> tuple:
  """image_id -> dict of arrays  ->  (image_ids [D], boxes [D, 4], scores [D], classes [D])."""
  keys = list(detections)
  ids = np.array([k for k in keys for _ in range(len(detections[k]['scores']))], dtype=object)
  cat = lambda f, shape: (np.concatenate([np.reshape(detections[k][f], shape) for k in keys])  # noqa: E731
                          if keys else np.zeros((0,) + shape[1:]))
  return ids, cat('boxes', (-1, 4)), cat('scores', (-1,)), cat('classes', (-1,))


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07: bool) -> float:
  """Average precision from a precision-recall curve.

  use_07: VOC2007's 11-point mean of the best precision at recall >= 0, 0.1 .. 1;
  otherwise VOC2010+'s area under the monotone precision envelope.
  """
  if use_07:
    return float(np.mean([np.max(precision[recall >= t], initial=0.0)
                          for t in np.linspace(0, 1, 11)]))
  r = np.concatenate([[0.0], recall, [1.0]])
  p = np.concatenate([[0.0], precision, [0.0]])
  p = np.maximum.accumulate(p[::-1])[::-1]
  changes = np.nonzero(r[1:] != r[:-1])[0]
  return float(np.sum((r[changes + 1] - r[changes]) * p[changes + 1]))


def voc_evaluate(truths: Mapping[int, dict], detections: Mapping[int, dict],
                 class_names: Sequence[str], use_07: bool = True,
                 iou_threshold: float = 0.5) -> dict:
  """Per-class VOC AP and its mean.

  Returns:
    dict(mAP, AP={name: AP or nan when the class has no non-difficult truth},
         curves={name: (recall f[D], precision f[D])}). The mean skips nan classes.
  """
  ap, curves = {}, {}
  ids, boxes, scores, classes = _flatten(detections)
  for c, name in enumerate(class_names, start=1):
    mine = classes == c
    gts = {k: (t['boxes'][t['labels'] == c], t['difficult'][t['labels'] == c])
           for k, t in truths.items()}
    positives = sum(int(np.sum(~dif)) for _, dif in gts.values())
    tp, fp = voc_match(ids[mine], scores[mine], boxes[mine], gts, iou_threshold)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / max(positives, 1)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    curves[name] = (recall, precision)
    ap[name] = voc_ap(recall, precision, use_07) if positives else float('nan')
  values = [v for v in ap.values() if not np.isnan(v)]
  return {'mAP': float(np.mean(values)) if values else float('nan'), 'AP': ap,
          'curves': curves}


def coco_evaluate(truths: Mapping[int, dict], detections: Mapping[int, dict],
                  class_names: Sequence[str], category_ids: Sequence[int] | None = None
                  ) -> dict:
  """The 12 standard COCO numbers with pycocotools, plus per-class AP and, per
  class, the precision-recall curve at IoU 0.5 (all areas, 100 detections).

  Ground-truth areas are box areas (the official annotations use mask areas,
  which shifts the small/medium/large split slightly); "difficult" is COCO's
  iscrowd. category_ids maps model class c to the dataset's id
  category_ids[c - 1] (default: c).
  """
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  ids = list(category_ids) if category_ids else list(range(1, len(class_names) + 1))
  images, annotations = [], []
  for image_id, t in truths.items():
    images.append({'id': int(image_id)})
    for box, label, crowd in zip(t['boxes'], t['labels'], t['difficult']):
      w, h = float(box[2] - box[0]), float(box[3] - box[1])
      annotations.append({'id': len(annotations) + 1, 'image_id': int(image_id),
                          'category_id': ids[int(label) - 1], 'bbox': [float(box[0]),
                          float(box[1]), w, h], 'area': w * h, 'iscrowd': int(crowd)})
  gt = COCO()
  gt.dataset = {'images': images, 'annotations': annotations,
                'categories': [{'id': i, 'name': n} for i, n in zip(ids, class_names)]}
  with contextlib.redirect_stdout(io.StringIO()):
    gt.createIndex()
  results = coco_results(detections, ids)
  if not results:
    return {'AP': 0.0, **{n: 0.0 for n in COCO_METRIC_NAMES[1:]}, 'per_class_AP': {},
            'curves': {}}
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator = COCOeval(gt, gt.loadRes(results), 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  precision = evaluator.eval['precision'][:, :, :, 0, -1]  # [T, R, K] all areas, 100 dets
  recall_points = evaluator.params.recThrs
  per_class, curves = {}, {}
  for k, name in enumerate(class_names):
    p = precision[:, :, k]
    per_class[name] = float(np.mean(p[p > -1])) if np.any(p > -1) else float('nan')
    at_50 = p[0] > -1  # IoU 0.5, the recall points the class reaches
    curves[name] = (recall_points[at_50], p[0][at_50])
  return {**dict(zip(COCO_METRIC_NAMES, map(float, evaluator.stats))),
          'per_class_AP': per_class, 'curves': curves}


def coco_results(detections: Mapping, category_ids: Sequence[int]) -> list[dict]:
  """Detections -> the COCO results format: image_id, category_id, bbox [x, y, w, h]
  in pixels, score. Model class c becomes category_ids[c - 1]."""
  return [{'image_id': image_id if isinstance(image_id, str) else int(image_id),
           'category_id': int(category_ids[int(c) - 1]),
           'bbox': [round(float(b[0]), 2), round(float(b[1]), 2),
                    round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)],
           'score': round(float(s), 5)}
          for image_id, d in detections.items()
          for b, s, c in zip(d['boxes'], d['scores'], d['classes'])]


class Evaluator:
  """Collects ground truth and detections image by image, then scores them.

  `add` takes one image's ground truth and detections (pixels xyxy, see the
  module docstring); `result` returns the same shape for every metric:
    metric:       the metric's name ('voc07', 'voc12' or 'coco');
    headline:     the key in `scalars` that sums the result up ('mAP' or 'AP');
    scalars:      {name: float}, every single number (VOC: mAP; COCO: the 12);
    per_class_AP: {class name: AP} (nan for a class without ground truth);
    curves:       {class name: (recall f[D], precision f[D])};
    num_images:   how many images were added.
  """

  def __init__(self, class_names: Sequence[str]):
    self.class_names = tuple(class_names)
    self.truths, self.detections = {}, {}

  def add(self, image_id, truth: dict, detections: dict) -> None:
    self.truths[image_id], self.detections[image_id] = truth, detections

  def merge(self, collections: Sequence[tuple[dict, dict]]) -> None:
    """Adds other evaluators' (truths, detections), e.g. every host's."""
    for truths, detections in collections:
      self.truths.update(truths)
      self.detections.update(detections)

  def result(self) -> dict:
    raise NotImplementedError


class VocEvaluator(Evaluator):
  """PASCAL VOC AP (use_07: VOC2007's 11-point, else VOC2010+'s all-point)."""

  def __init__(self, class_names: Sequence[str], use_07: bool = True):
    super().__init__(class_names)
    self.use_07 = use_07

  def result(self) -> dict:
    r = voc_evaluate(self.truths, self.detections, self.class_names, self.use_07)
    return {'metric': 'voc07' if self.use_07 else 'voc12', 'headline': 'mAP',
            'scalars': {'mAP': r['mAP']}, 'per_class_AP': r['AP'], 'curves': r['curves'],
            'num_images': len(self.truths)}


class CocoEvaluator(Evaluator):
  """The COCO numbers (pycocotools); curves are precision at IoU 0.5, all areas."""

  def __init__(self, class_names: Sequence[str], category_ids: Sequence[int] | None = None):
    super().__init__(class_names)
    self.category_ids = category_ids

  def result(self) -> dict:
    r = coco_evaluate(self.truths, self.detections, self.class_names, self.category_ids)
    return {'metric': 'coco', 'headline': 'AP',
            'scalars': {k: r[k] for k in COCO_METRIC_NAMES}, 'per_class_AP': r['per_class_AP'],
            'curves': r['curves'], 'num_images': len(self.truths)}
