"""Box utilities against hand-computed values and brute-force loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import box_utils


def brute_force_iou(a, b):
  out = np.zeros((len(a), len(b)))
  for i, (ax0, ay0, ax1, ay1) in enumerate(a):
    for j, (bx0, by0, bx1, by1) in enumerate(b):
      iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
      ih = max(0.0, min(ay1, by1) - max(ay0, by0))
      inter = iw * ih
      union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


def random_boxes(rng, n):
  corners = rng.uniform(0, 1, (n, 2, 2))
  return np.concatenate([corners.min(1), corners.max(1)], axis=-1)


SPECIAL = np.array([
    [0.0, 0.0, 0.5, 0.5],   # base
    [0.5, 0.0, 1.0, 0.5],   # touches base along an edge: IoU 0
    [0.1, 0.1, 0.2, 0.2],   # nested inside base: IoU = 0.01 / 0.25
    [0.3, 0.3, 0.3, 0.3],   # zero area, inside base
    [0.0, 0.0, 0.0, 0.0],   # padding
    [0.0, 0.0, 0.5, 0.5],   # identical to base: IoU 1
])


@pytest.mark.parametrize('xp', [np, jnp])
def test_iou_matches_brute_force(xp):
  rng = np.random.default_rng(0)
  a = np.concatenate([SPECIAL, random_boxes(rng, 30)])
  b = np.concatenate([SPECIAL, random_boxes(rng, 20)])
  got = np.asarray(box_utils.pairwise_iou(xp.asarray(a), xp.asarray(b)))
  np.testing.assert_allclose(got, brute_force_iou(a, b), atol=1e-6)


def test_iou_hand_values():
  iou = box_utils.pairwise_iou(SPECIAL, SPECIAL)
  assert iou[0, 1] == 0.0
  assert iou[0, 2] == pytest.approx(0.01 / 0.25)
  assert iou[0, 3] == 0.0 and iou[3, 3] == 0.0 and iou[4, 4] == 0.0
  assert iou[0, 5] == 1.0


def test_iou_gradient_finite_for_degenerate_boxes():
  grad = jax.grad(lambda a: box_utils.pairwise_iou(a, jnp.asarray(SPECIAL)).sum())(
      jnp.asarray(SPECIAL))
  assert np.all(np.isfinite(grad))


def test_iou_batched_leading_axes():
  rng = np.random.default_rng(1)
  a, b = random_boxes(rng, 12).reshape(3, 4, 4), random_boxes(rng, 15).reshape(3, 5, 4)
  got = box_utils.pairwise_iou(jnp.asarray(a), jnp.asarray(b))
  for i in range(3):
    np.testing.assert_allclose(got[i], brute_force_iou(a[i], b[i]), atol=1e-6)


def test_conversions_roundtrip_and_hand_case():
  xyxy = np.array([[10.0, 20.0, 50.0, 80.0]])
  np.testing.assert_allclose(box_utils.xyxy_to_cxcywh(xyxy), [[30.0, 50.0, 40.0, 60.0]])
  boxes = random_boxes(np.random.default_rng(2), 10)
  np.testing.assert_allclose(
      box_utils.cxcywh_to_xyxy(box_utils.xyxy_to_cxcywh(boxes)), boxes, atol=1e-12)


def test_encode_hand_case():
  anchor = np.array([0.5, 0.5, 0.2, 0.4])               # cxcywh
  gt = np.array([0.42, 0.36, 0.62, 0.76])               # xyxy: centre (0.52, 0.56), 0.2 x 0.4
  expected = [(0.52 - 0.5) / (0.1 * 0.2), (0.56 - 0.5) / (0.1 * 0.4), 0.0, 0.0]
  np.testing.assert_allclose(box_utils.encode(gt, anchor), expected, atol=1e-12)
  gt2 = np.array([0.4, 0.3, 0.8, 0.5])                  # w doubles, h halves
  np.testing.assert_allclose(box_utils.encode(gt2, anchor)[2:],
                             [np.log(2) / 0.2, np.log(0.5) / 0.2], atol=1e-12)


@pytest.mark.parametrize('xp', [np, jnp])
def test_encode_then_decode_returns_boxes(xp):
  rng = np.random.default_rng(3)
  boxes = random_boxes(rng, 100) + np.array([0, 0, 1e-3, 1e-3])
  anchors = np.concatenate([rng.uniform(0, 1, (100, 2)), rng.uniform(0.05, 1, (100, 2))], -1)
  for variances in [(0.1, 0.2), (1.0, 1.0)]:
    offsets = box_utils.encode(xp.asarray(boxes), xp.asarray(anchors), variances)
    back = box_utils.decode(offsets, xp.asarray(anchors), variances)
    assert type(back) is type(xp.asarray(boxes))
    np.testing.assert_allclose(np.asarray(back), boxes, atol=1e-5)


@pytest.mark.parametrize('xp', [np, jnp])
def test_decode_clamps_the_size_ratio_at_62_5(xp):
  anchor = xp.asarray([[0.5, 0.5, 0.01, 0.02]])
  offsets = xp.asarray([[0.0, 0.0, 1e4, 30.0]])  # exp(2000) overflows; 30 * 0.2 = 6 > log 62.5
  box = np.asarray(box_utils.decode(offsets, anchor))[0]
  assert np.all(np.isfinite(box))
  np.testing.assert_allclose(box[2:] - box[:2], [0.01 * 62.5, 0.02 * 62.5], rtol=1e-5)
