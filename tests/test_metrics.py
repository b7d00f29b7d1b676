"""VOC AP on hand-computed cases; perfect predictions score 1 in VOC and COCO."""
import numpy as np
import pytest

from ssd_jax import metrics

A, B, C = [10, 10, 50, 50], [60, 60, 90, 90], [20, 20, 70, 70]


def truth(boxes, labels, difficult):
  return {'boxes': np.array(boxes, float).reshape(-1, 4), 'labels': np.array(labels),
          'difficult': np.array(difficult, bool)}


def dets(boxes, scores, classes):
  return {'boxes': np.array(boxes, float).reshape(-1, 4), 'scores': np.array(scores),
          'classes': np.array(classes)}


def hand_case():
  """Class 1: image 1 has A and difficult B, image 2 has C.

  Detections by score: A (tp), A again (duplicate: fp), B (difficult: ignored),
  nothing (fp), C (tp). Two positives. Cumulative tp 1 1 1 1 2, fp 0 1 1 2 2:
  recall .5 .5 .5 .5 1, precision 1 .5 .5 1/3 .5.
  VOC07: recall thresholds 0...5 (6 points) reach precision 1, .6...1 (5 points)
  reach .5: AP = (6 + 2.5) / 11. VOC12: .5 * 1 + .5 * .5 = .75.
  """
  truths = {1: truth([A, B], [1, 1], [False, True]), 2: truth([C], [1], [False])}
  detections = {1: dets([A, A, B, [0, 0, 5, 5]], [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1]),
                2: dets([C], [0.5], [1])}
  return truths, detections


@pytest.mark.parametrize('use_07,expected', [(True, 8.5 / 11), (False, 0.75)])
def test_voc_ap_hand_computed(use_07, expected):
  truths, detections = hand_case()
  result = metrics.voc_evaluate(truths, detections, ['thing'], use_07=use_07)
  assert result['AP']['thing'] == pytest.approx(expected)
  np.testing.assert_allclose(result['curves']['thing'][0], [.5, .5, .5, .5, 1])


def test_voc_ap_mean_skips_classes_without_truth_and_counts_misses():
  truths = {1: truth([A, C], [1, 2], [False, False])}
  detections = {1: dets([A], [0.9], [1])}  # class 2 missed, class 3 has no truth
  result = metrics.voc_evaluate(truths, detections, ['a', 'b', 'c'], use_07=False)
  assert result['AP']['a'] == 1.0 and result['AP']['b'] == 0.0
  assert np.isnan(result['AP']['c']) and result['mAP'] == 0.5


def test_voc_iou_uses_inclusive_pixels():
  # [0, 0, 9, 9] covers 10x10 pixels; [5, 0, 14, 9] overlaps 5x10 of them.
  assert metrics.voc_iou(np.array([0, 0, 9, 9.]), np.array([[5, 0, 14, 9.]]))[0] == \
      pytest.approx(50 / 150)


def perfect_case():
  rng = np.random.default_rng(0)
  truths, detections = {}, {}
  for image_id in range(5):
    xy = rng.uniform(0, 200, (3, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 100, (3, 2))], -1)
    labels = rng.integers(1, 4, 3)
    truths[image_id] = truth(boxes, labels, [False] * 3)
    detections[image_id] = dets(boxes, [0.9, 0.8, 0.7], labels)
  return truths, detections


@pytest.mark.parametrize('use_07', [True, False])
def test_perfect_predictions_score_one_in_voc(use_07):
  result = metrics.voc_evaluate(*perfect_case(), ['a', 'b', 'c'], use_07=use_07)
  assert result['mAP'] == 1.0


def test_perfect_predictions_score_one_in_coco():
  result = metrics.coco_evaluate(*perfect_case(), ['a', 'b', 'c'], category_ids=[3, 7, 9])
  assert result['AP'] == pytest.approx(1.0) and result['AP50'] == pytest.approx(1.0)
  assert result['AR100'] == pytest.approx(1.0)
  assert set(result) >= set(metrics.COCO_METRIC_NAMES)


def test_coco_counts_a_missed_object():
  truths, detections = perfect_case()
  for d in detections.values():  # drop every third-best detection
    for k in d:
      d[k] = d[k][:2]
  result = metrics.coco_evaluate(truths, detections, ['a', 'b', 'c'])
  assert result['AR100'] == pytest.approx(2 / 3, abs=0.1) and result['AP'] < 1.0


def test_a_detection_at_exactly_half_overlap_is_a_true_positive():
  """VOCevaldet.m: ovmax >= 0.5, inclusive pixels. [0,0,9,9] is 10x10 = 100 pixels;
  [0,0,4,9] covers 50 of them: IoU 50 / 100 = 0.5 exactly."""
  truths = {1: truth([[0, 0, 9, 9]], [1], [False])}
  detections = {1: dets([[0, 0, 4, 9]], [0.9], [1])}
  assert metrics.voc_iou(np.array([0, 0, 4, 9.]), np.array([[0, 0, 9, 9.]]))[0] == 0.5
  assert metrics.voc_evaluate(truths, detections, ['thing'])['AP']['thing'] == 1.0
