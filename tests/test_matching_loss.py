"""Matching and the MultiBox loss against the plain NumPy loops in numpy_reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import box_utils, builders, losses, matching
from ssd_jax.testing import numpy_reference as ref

MAX_BOXES = 8


@pytest.fixture(scope='module')
def anchors(load_config):
  return builders.build_default_boxes(load_config('voc300'))


def make_batch(rng, num_classes=21):
  """Images with 0, 1, tiny, overlapping, border and random boxes, padded to MAX_BOXES."""
  cases = [
      [],
      [[0.3, 0.3, 0.6, 0.7]],
      [[0.500, 0.500, 0.504, 0.503]],                          # smaller than any default box
      [[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.3, 0.3, 0.6, 0.6]],  # overlapping
      [[0.0, 0.0, 0.2, 0.3], [0.7, 0.8, 1.0, 1.0], [0.0, 0.4, 1.0, 0.6]],   # at the border
  ]
  for n in (MAX_BOXES, 5):
    c = rng.uniform(0, 1, (n, 2, 2))
    cases.append(np.concatenate([c.min(1), c.max(1) + 1e-3], -1).clip(0, 1).tolist())
  boxes = np.zeros((len(cases), MAX_BOXES, 4), np.float32)
  labels = np.zeros((len(cases), MAX_BOXES), np.int32)
  for i, case in enumerate(cases):
    if case:
      boxes[i, :len(case)] = case
      labels[i, :len(case)] = rng.integers(1, num_classes, len(case))
  return boxes, labels


@pytest.mark.parametrize('seed', range(4))
def test_matching_equals_numpy_reference(anchors, seed):
  boxes, labels = make_batch(np.random.default_rng(seed))
  # Both sides get the same IoU (checked against a brute-force loop elsewhere):
  # same-size default boxes inside a ground truth tie exactly, and 1-ulp
  # differences between two computations of it would break ties differently.
  iou = np.asarray(jax.jit(jax.vmap(box_utils.pairwise_iou, (0, None)))(
      boxes, box_utils.cxcywh_to_xyxy(anchors)))
  loc_t, cls_t = jax.jit(jax.vmap(matching.match_one, (0, 0, None, None, None, 0)))(
      boxes, labels, anchors, 0.5, (0.1, 0.2), iou)
  for i in range(len(boxes)):
    want_loc, want_cls = ref.match_image(boxes[i], labels[i], anchors, iou=iou[i])
    np.testing.assert_array_equal(np.asarray(cls_t[i]), want_cls)
    np.testing.assert_allclose(np.asarray(loc_t[i]), want_loc, atol=2e-4, rtol=1e-4)
  n_boxes = (labels > 0).sum(1)
  assert np.all((np.asarray(cls_t) > 0).sum(1) >= n_boxes)  # every box matched at least once
  assert np.all(np.asarray(cls_t[0]) == 0)                  # the empty image is all background


def test_match_end_to_end_without_ties(anchors):
  """End to end (IoU computed inside) on the cases free of exact IoU ties: empty
  and single. Tiny boxes, border strips and overlapping same-size boxes all give
  exact ties (same-size default boxes containing, or contained in, a box), which
  1-ulp differences may break either way; they are covered above."""
  boxes, labels = make_batch(np.random.default_rng(0))
  boxes, labels = boxes[:2], labels[:2]
  loc_t, cls_t = jax.jit(matching.match)(boxes, labels, anchors)
  for i in range(len(boxes)):
    want_loc, want_cls = ref.match_image(boxes[i], labels[i], anchors)
    np.testing.assert_array_equal(np.asarray(cls_t[i]), want_cls)
    np.testing.assert_allclose(np.asarray(loc_t[i]), want_loc, atol=2e-4, rtol=1e-4)


def test_every_ground_truth_gets_its_own_box_when_two_want_the_same():
  # One default box, in the middle; two more to the right.
  anchors = np.array([[0.5, 0.5, 0.2, 0.2], [0.7, 0.5, 0.2, 0.2], [0.9, 0.5, 0.2, 0.2]],
                     np.float32)
  # Both ground truths overlap anchor 0 best; gt 1 overlaps it more.
  gt = np.array([[0.42, 0.4, 0.66, 0.6], [0.4, 0.4, 0.62, 0.6]], np.float32)
  iou = box_utils.pairwise_iou(gt, box_utils.cxcywh_to_xyxy(anchors))
  assert np.argmax(iou[0]) == np.argmax(iou[1]) == 0 and iou[1, 0] > iou[0, 0]
  _, cls_t = matching.match_one(gt, np.array([3, 7]), anchors, iou_threshold=0.99)
  np.testing.assert_array_equal(cls_t, [7, 3, 0])  # gt 0 takes its second best, anchor 1


def test_loss_equals_numpy_reference(anchors):
  rng = np.random.default_rng(1)
  boxes, labels = make_batch(rng)
  loc_t, cls_t = matching.match(boxes, labels, anchors)
  loc_pred = rng.normal(0, 1, loc_t.shape).astype(np.float32)
  logits = rng.normal(0, 2, cls_t.shape + (21,)).astype(np.float32)
  for ratio, alpha in [(3.0, 1.0), (1.0, 2.0)]:
    loss, parts = jax.jit(losses.multibox_loss, static_argnums=(4, 5))(
        loc_pred, logits, loc_t, cls_t, ratio, alpha)
    want, want_loc, want_conf, want_n = ref.multibox_loss(
        loc_pred, logits, np.asarray(loc_t), np.asarray(cls_t), ratio, alpha)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(parts['loc'], want_loc, rtol=1e-5)
    np.testing.assert_allclose(parts['conf'], want_conf, rtol=1e-5)
    assert parts['num_pos'] == want_n


def test_loss_in_float32_for_bfloat16_inputs(anchors):
  rng = np.random.default_rng(2)
  boxes, labels = make_batch(rng)
  loc_t, cls_t = matching.match(boxes, labels, anchors)
  logits = rng.normal(0, 2, cls_t.shape + (21,)).astype(np.float32)
  loc_pred = rng.normal(0, 1, loc_t.shape).astype(np.float32)
  loss, _ = losses.multibox_loss(jnp.asarray(loc_pred, jnp.bfloat16),
                                 jnp.asarray(logits, jnp.bfloat16), loc_t, cls_t)
  want, *_ = ref.multibox_loss(np.asarray(jnp.asarray(loc_pred, jnp.bfloat16), np.float32),
                               np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32),
                               np.asarray(loc_t), np.asarray(cls_t))
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_no_boxes_gives_zero_loss_and_zero_gradient(anchors):
  boxes = np.zeros((2, MAX_BOXES, 4), np.float32)
  labels = np.zeros((2, MAX_BOXES), np.int32)
  loc_t, cls_t = matching.match(boxes, labels, anchors)
  rng = np.random.default_rng(3)
  loc_pred = jnp.asarray(rng.normal(0, 1, loc_t.shape), jnp.float32)
  logits = jnp.asarray(rng.normal(0, 1, cls_t.shape + (21,)), jnp.float32)
  (loss, parts), grads = jax.value_and_grad(losses.multibox_loss, argnums=(0, 1), has_aux=True)(
      loc_pred, logits, loc_t, cls_t)
  assert loss == 0.0 and parts['num_pos'] == 0
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


def test_compiles_once_and_gradient_is_finite(anchors):
  traces = []

  def step(loc_pred, logits, boxes, labels):
    traces.append(1)
    loc_t, cls_t = matching.match(boxes, labels, anchors)
    return losses.multibox_loss(loc_pred, logits, loc_t, cls_t)[0]

  grad_fn = jax.jit(jax.grad(step, argnums=(0, 1)))
  for seed in range(3):
    rng = np.random.default_rng(seed)
    boxes, labels = make_batch(rng)
    loc_pred = rng.normal(0, 10, (len(boxes), len(anchors), 4)).astype(np.float32)
    logits = rng.normal(0, 30, (len(boxes), len(anchors), 21)).astype(np.float32)
    grads = grad_fn(loc_pred, logits, boxes, labels)
    assert all(np.all(np.isfinite(g)) for g in grads)
  assert len(traces) == 1


def test_hard_negatives_hand_case():
  bg = jnp.array([[0.1, 0.9, 0.5, 0.7, 0.3, 0.9]])
  pos = jnp.array([[False, True, False, False, False, False]])
  got = losses.hard_negatives(bg, pos, 3.0)
  # Negatives by loss: index 5 (0.9), 3 (0.7), 2 (0.5); the positive at 1 is skipped.
  np.testing.assert_array_equal(got, [[False, False, True, True, False, True]])


# One jitted selection for every case below, and shapes drawn from a few (one row or
# several; one column, a handful, hundreds): each shape compiles once per run.
_SELECT_HARD_NEGATIVES = jax.jit(lambda loss, pos: losses.hard_negatives(loss, pos, 3.0))
_ROWS, _COLUMNS = (1, 2, 5), (1, 2, 7, 399)


@pytest.mark.parametrize('values', ['continuous', 'ties', 'signed', 'infinite'])
def test_hard_negatives_are_a_stable_sorts_first_choices(values):
  rng = np.random.default_rng(len(values))
  for _ in range(40):
    shape = (rng.choice(_ROWS), rng.choice(_COLUMNS))
    loss = {'continuous': lambda: rng.exponential(1.0, shape),
            'ties': lambda: rng.integers(0, 4, shape) * 0.5,  # many equal losses
            'signed': lambda: rng.choice([-1.0, 1.0, -0.0, 0.0], shape) * rng.random(shape),
            'infinite': lambda: np.where(rng.random(shape) < 0.3, -np.inf, np.where(
                rng.random(shape) < 0.1, np.inf, rng.normal(0, 1, shape)))}[values]()
    loss = loss.astype(np.float32)
    positive = rng.random(shape) < rng.choice([0.0, 0.02, 0.3, 0.9])
    want = np.zeros_like(positive)
    for row, (l, p) in enumerate(zip(loss, positive)):
      want[row, ref.hardest_negatives(l, p, 3.0)] = True
    np.testing.assert_array_equal(_SELECT_HARD_NEGATIVES(loss, positive), want)


def test_stage_two_takes_a_box_at_exactly_the_threshold():
  """The release compares with >=: IoU exactly 0.5 (exact in float32) is a match."""
  anchors = np.array([[0.25, 0.5, 0.5, 1.0],   # the ground truth itself: stage 1
                      [0.5, 0.5, 1.0, 1.0],    # the whole image: IoU 0.5 exactly
                      [0.9, 0.5, 0.2, 1.0]], np.float32)
  gt = np.array([[0.0, 0.0, 0.5, 1.0]], np.float32)
  iou = box_utils.pairwise_iou(gt, box_utils.cxcywh_to_xyxy(anchors))
  assert iou[0, 1] == 0.5
  _, cls_t = matching.match_one(gt, np.array([4]), anchors, iou_threshold=0.5)
  np.testing.assert_array_equal(cls_t, [4, 4, 0])
