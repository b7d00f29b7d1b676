"""Matching ground truth to default boxes, vectorised over static shapes.

Two stages, as in the paper and its authors' code:
  1. Bipartite: repeatedly take the (ground truth, default box) pair of highest
     IoU among those still free, and pair them. Every valid ground truth that
     overlaps any default box gets a default box of its own, so when two ground
     truths want the same default box, the one with the higher IoU takes it and
     the other takes its best remaining default box. Ties go to the lower ground
     truth index, then the lower default box index.
  2. Per default box: every default box not paired in stage 1 whose best IoU with
     a valid ground truth is >= threshold takes that ground truth (ties: lower
     index). The authors' code compares with >= (bbox_util.cpp, MatchBBox).
Padded ground truth (invalid) never matches. Everything else is background.

`rule='forced_best'` is NVIDIA's SSD300-ResNet50 rule (DeepLearningExamples,
ssd/utils.py, Encoder.encode) instead: stage 1 gives every valid ground truth
its own best default box (argmax of its IoU row, ties to the lower index; when
two ground truths share a best box, the later one takes it, as their indexed
assignment does), and stage 2 compares with > threshold. An object whose best
IoU is 0 (a degenerate box) forces nothing here, where theirs would force box 0.

Stage 1 is a `lax.while_loop` that runs once per matched ground truth (the
number of boxes in the image, not the padded size), each step one argmax over
a [G, G] table of candidates.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ssd_jax import box_utils


def _bipartite(iou):
  """f32[G, A] (invalid rows < 0) -> i32[A] ground truth paired with each box, or -1.

  At most G - 1 default boxes are taken before a ground truth's turn, so its best
  free default box is always among its top G: the loop runs on that [G, G]
  candidate table instead of the [G, A] matrix. `lax.top_k` keeps equal values
  in index order, so ties break as in the full matrix.
  """
  num_gt, num_anchors = iou.shape
  cand_iou, cand_idx = lax.top_k(iou, min(num_gt, num_anchors))  # [G, K]

  def cond(state):
    work, _ = state
    return jnp.max(work) > 0

  def body(state):
    work, paired = state
    g, k = jnp.unravel_index(jnp.argmax(work), work.shape)
    a = cand_idx[g, k]
    paired = paired.at[a].set(g.astype(jnp.int32))
    work = jnp.where(cand_idx == a, -1.0, work).at[g].set(-1.0)
    return work, paired

  _, paired = lax.while_loop(cond, body, (cand_iou, jnp.full((num_anchors,), -1, jnp.int32)))
  return paired


RULES = ('bipartite', 'forced_best')


def _forced_best(iou):
  """f32[G, A] (invalid rows < 0) -> i32[A]: the last ground truth whose best
  default box each box is, or -1."""
  num_gt, num_anchors = iou.shape
  owner = jnp.where(jnp.max(iou, axis=1) > 0, jnp.arange(num_gt, dtype=jnp.int32), -1)
  return jnp.full((num_anchors,), -1, jnp.int32).at[jnp.argmax(iou, axis=1)].max(owner)


def match_one(gt_boxes, gt_labels, anchors, iou_threshold: float = 0.5,
              variances=box_utils.DEFAULT_VARIANCES, iou=None, rule: str = 'bipartite'):
  """Training targets for one image.

  Args:
    gt_boxes: f32[G, 4] normalised xyxy ground truth, padded.
    gt_labels: i32[G] model classes (1..C-1); 0 marks padding.
    anchors: f32[A, 4] normalised cxcywh default boxes.
    iou_threshold: stage 2 threshold.
    variances: box coding variances.
    iou: optional f32[G, A] IoU of `gt_boxes` with the anchors, if already known.
    rule: 'bipartite' (the authors') or 'forced_best' (NVIDIA's); see the module doc.

  Returns:
    loc_targets: f32[A, 4] encoded offsets (zeros where background).
    cls_targets: i32[A] model class per default box, 0 for background.
  """
  gt_boxes = gt_boxes.astype(jnp.float32)
  anchors = jnp.asarray(anchors, jnp.float32)
  anchors_xyxy = box_utils.cxcywh_to_xyxy(anchors)
  valid = gt_labels > 0
  if iou is None:
    iou = box_utils.pairwise_iou(gt_boxes, anchors_xyxy)  # [G, A]
  iou = jnp.where(valid[:, None], iou, -1.0)

  paired = _bipartite(iou) if rule == 'bipartite' else _forced_best(iou)
  best_gt = jnp.argmax(iou, axis=0)  # [A]
  best_iou = jnp.max(iou, axis=0)
  is_paired = paired >= 0
  matched_gt = jnp.where(is_paired, paired, best_gt)
  over = best_iou >= iou_threshold if rule == 'bipartite' else best_iou > iou_threshold
  positive = is_paired | over

  cls_targets = jnp.where(positive, gt_labels[matched_gt], 0).astype(jnp.int32)
  # Background rows encode the anchor against itself: finite, no log(0).
  targets = jnp.where(positive[:, None], gt_boxes[matched_gt], anchors_xyxy)
  loc_targets = box_utils.encode(targets, anchors, variances)
  loc_targets = jnp.where(positive[:, None], loc_targets, 0.0)
  return loc_targets, cls_targets


def match(gt_boxes, gt_labels, anchors, iou_threshold: float = 0.5,
          variances=box_utils.DEFAULT_VARIANCES, rule: str = 'bipartite'):
  """`match_one` over a batch: f32[B, G, 4], i32[B, G] -> f32[B, A, 4], i32[B, A]."""
  one = functools.partial(match_one, iou_threshold=iou_threshold,
                          variances=tuple(variances), rule=rule)
  return jax.vmap(one, in_axes=(0, 0, None))(gt_boxes, gt_labels, anchors)
