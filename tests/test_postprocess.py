"""Post-processing against plain NumPy: greedy NMS and the whole detection step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import box_utils, postprocess
from ssd_jax.testing import numpy_reference


def random_boxes(rng, n, duplicates=0):
  centres = rng.uniform(0.2, 0.8, (n, 2))
  sides = rng.uniform(0.05, 0.4, (n, 2))
  boxes = np.concatenate([centres - sides / 2, centres + sides / 2], -1).astype(np.float32)
  boxes[n - duplicates:] = boxes[:duplicates]  # fully overlapping copies
  return boxes


@pytest.mark.parametrize('seed', range(4))
def test_nms_equals_numpy_greedy_nms(seed):
  rng = np.random.default_rng(seed)
  n = 64
  boxes = random_boxes(rng, n, duplicates=8)
  scores = rng.choice(np.linspace(0.1, 0.9, 9), n).astype(np.float32)  # many ties
  order = np.argsort(-scores, kind='stable')
  keep = postprocess.nms_keep(jnp.asarray(boxes[order]), jnp.ones(n, bool), 0.45)
  assert sorted(order[np.asarray(keep)]) == sorted(numpy_reference.nms(boxes, scores, 0.45))


def test_nms_skips_invalid_candidates():
  boxes = jnp.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1.]])
  keep = postprocess.nms_keep(boxes, jnp.array([False, True, True]), 0.45)
  np.testing.assert_array_equal(keep, [False, True, False])


def test_postprocess_equals_the_numpy_loop():
  rng = np.random.default_rng(0)
  b, a, c = 2, 300, 4
  anchors = box_utils.xyxy_to_cxcywh(random_boxes(rng, a))
  loc = rng.normal(0, 0.5, (b, a, 4)).astype(np.float32)
  logits = rng.normal(0, 2, (b, a, c)).astype(np.float32)
  out = jax.jit(lambda l, g: postprocess.postprocess(l, g, jnp.asarray(anchors), top_k=50,
                                                     max_detections=60))(loc, logits)
  for i in range(b):
    expected = numpy_reference.postprocess(loc[i], logits[i], anchors, 0.01, 50, 0.45, 60)
    n = int(out.valid[i].sum())
    assert n == len(expected)
    np.testing.assert_allclose(out.scores[i, :n], [f[0] for f in expected], rtol=1e-5)
    np.testing.assert_array_equal(out.classes[i, :n], [f[1] for f in expected])
    np.testing.assert_allclose(out.boxes[i, :n], [f[2] for f in expected], atol=1e-5)
    assert not np.any(out.valid[i, n:]) and np.all(out.scores[i, n:] == 0)


def test_scores_below_threshold_give_no_detections():
  logits = jnp.zeros((1, 10, 3)).at[..., 0].set(20.0)  # all background
  anchors = jnp.tile(jnp.array([[0.5, 0.5, 0.2, 0.2]]), (10, 1))
  out = postprocess.postprocess(jnp.zeros((1, 10, 4)), logits, anchors)
  assert out.boxes.shape == (1, 20, 4) and not np.any(out.valid)
