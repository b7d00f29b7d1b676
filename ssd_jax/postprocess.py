"""From network outputs to detections, inside jit, with static shapes.

Batched over images and vectorised over classes: decode, softmax, a score
threshold, the top k per class, greedy NMS per class, then the best
`max_detections` per image. No host round trip per class or per image; the
result is fixed-size arrays with a validity mask.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssd_jax import box_utils, builders


class Detections(NamedTuple):
  """Fixed-size detections of a batch, best first; D = max_detections.

  boxes:   f32[B, D, 4] normalised xyxy, clipped to [0, 1].
  scores:  f32[B, D] class probabilities (0 where not valid).
  classes: i32[B, D] model classes (1..C-1; 0 where not valid).
  valid:   bool[B, D].
  """
  boxes: jax.Array
  scores: jax.Array
  classes: jax.Array
  valid: jax.Array


def nms_keep(boxes: jax.Array, valid: jax.Array, iou_threshold: float) -> jax.Array:
  """Greedy NMS on boxes sorted best first.

  A box is kept when it is valid and no kept box before it overlaps it with
  IoU > iou_threshold. Iterating `keep = valid & ~any(kept earlier & overlap)`
  from `keep = valid` fixes one more leading entry each pass, so the loop
  reaches exactly greedy NMS, usually in a few passes rather than K.

  Args:
    boxes: f32[K, 4] xyxy, sorted by descending score.
    valid: bool[K] candidates (False: below threshold or padding).
    iou_threshold: overlap above which a later box is suppressed.

  Returns:
    bool[K] kept.
  """
  k = boxes.shape[0]
  earlier = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]
  suppresses = (box_utils.pairwise_iou(boxes, boxes) > iou_threshold) & earlier

  def step(carry):
    keep, _ = carry
    new = valid & ~jnp.any(suppresses & keep[:, None], axis=0)
    return new, jnp.any(new != keep)

  keep, _ = jax.lax.while_loop(lambda c: c[1], step, (valid, jnp.array(True)))
  return keep


def _per_class(boxes, scores, score_threshold, top_k, iou_threshold):
  """boxes f32[A, 4], scores f32[A] of one class -> (scores f32[K], indices i32[K]) kept."""
  top_scores, index = jax.lax.top_k(scores, top_k)
  keep = nms_keep(boxes[index], top_scores > score_threshold, iou_threshold)
  return jnp.where(keep, top_scores, 0.0), index


def _per_image(boxes, probs, score_threshold, top_k, iou_threshold, max_detections):
  """boxes f32[A, 4] xyxy, probs f32[A, C] -> one image's Detections (unbatched)."""
  fg = probs[:, 1:].T  # [C-1, A]
  scores, index = jax.vmap(_per_class, (None, 0, None, None, None))(
      boxes, fg, score_threshold, top_k, iou_threshold)  # [C-1, K] each
  best, flat = jax.lax.top_k(scores.reshape(-1), max_detections)
  classes = flat // top_k + 1
  valid = best > 0
  return Detections(boxes=boxes[index.reshape(-1)[flat]], scores=best,
                    classes=jnp.where(valid, classes, 0), valid=valid)


def limits(top_k: int, max_detections: int, num_anchors: int,
           num_classes: int) -> tuple[int, int]:
  """(candidates per class, detections per image) as postprocess applies them:
  top_k capped at the number of default boxes, max_detections at what the
  classes' candidates can give. num_classes counts the background."""
  top_k = min(top_k, num_anchors)
  return top_k, min(max_detections, top_k * (num_classes - 1))


def postprocess(loc: jax.Array, logits: jax.Array, anchors: jax.Array, variances=(0.1, 0.2),
                score_threshold: float = 0.01, top_k: int = 400, iou_threshold: float = 0.45,
                max_detections: int = 200, clip_boxes: bool = True) -> Detections:
  """Network outputs of a batch -> its Detections.

  Args:
    loc: f32[B, A, 4] box offsets; logits: f32[B, A, C], class 0 background.
    anchors: f32[A, 4] normalised cxcywh default boxes.
    variances, score_threshold, top_k (per class, before NMS), iou_threshold
      (NMS), max_detections (per image, after NMS): the recipe's values.
    clip_boxes: clip decoded boxes to the image before NMS (the authors' and
      torchvision's rule); False keeps them whole (NVIDIA's SSD300).

  Returns:
    Detections with D = max_detections (see its docstring).
  """
  top_k, max_detections = limits(top_k, max_detections, anchors.shape[0], logits.shape[-1])
  boxes = box_utils.decode(loc.astype(jnp.float32), anchors, variances)
  if clip_boxes:
    boxes = jnp.clip(boxes, 0.0, 1.0)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  per_image = functools.partial(_per_image, score_threshold=score_threshold, top_k=top_k,
                                iou_threshold=iou_threshold, max_detections=max_detections)
  return jax.vmap(per_image)(boxes, probs)


def from_config(loc, logits, anchors, config) -> Detections:
  """`postprocess` with the config's eval settings and box coding."""
  e = config.eval
  return postprocess(loc, logits, anchors, tuple(config.anchors.variances), e.score_threshold,
                     e.top_k, e.nms_iou, e.max_detections, e.clip_boxes)


def network_detections(variables, pixels, model, anchors, config) -> Detections:
  """The network on u8/f32[B, S, S, 3] RGB pixels (normalised here), then the
  config's post-processing.

  variables: what builders.inference_variables gives ({'params'} and, with
  BatchNorm, 'batch_stats'). What evaluation, the Detector, export and the
  inference benchmark jit.
  """
  loc, logits = model.apply(variables, builders.normalise_images(pixels, config))
  return from_config(loc, logits, anchors, config)
