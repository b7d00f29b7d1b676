"""The MultiBox loss: smooth L1 on positives, cross-entropy with hard negatives.

L = (L_conf + alpha * L_loc) / N, N = matched default boxes in the whole batch
(the authors' normalisation); L = 0 when N = 0. Everything in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(x):
  """Elementwise Huber with delta 1: 0.5 x^2 if |x| < 1 else |x| - 0.5."""
  ax = jnp.abs(x)
  return jnp.where(ax < 1.0, 0.5 * jnp.square(x), ax - 0.5)


def hard_negatives(background_loss, positive, neg_pos_ratio: float):
  """Per image, the negatives of highest background loss, ratio x positives.

  Args:
    background_loss: f32[B, A] cross-entropy of predicting background.
    positive: bool[B, A].
    neg_pos_ratio: negatives kept per positive (3 in the paper).

  Returns:
    bool[B, A] selected negatives. Ties go to the lower default box index.
  """
  num_pos = jnp.sum(positive, axis=1, keepdims=True)
  num_neg = jnp.minimum(jnp.floor(neg_pos_ratio * num_pos),
                        positive.shape[1] - num_pos).astype(jnp.int32)
  ranked = jnp.where(positive, -jnp.inf, background_loss)
  order = jnp.argsort(-ranked, axis=1, stable=True)
  # Invert the permutation with a scatter (cheaper than a second sort).
  positions = jnp.broadcast_to(jnp.arange(order.shape[1]), order.shape)
  rank = jnp.zeros_like(order).at[jnp.arange(order.shape[0])[:, None], order].set(positions)
  return (rank < num_neg) & ~positive


def multibox_loss(loc_pred, logits, loc_targets, cls_targets, neg_pos_ratio: float = 3.0,
                  loc_weight: float = 1.0):
  """The SSD training loss.

  Args:
    loc_pred: f[B, A, 4] predicted offsets (encoded, see box_utils.encode).
    logits: f[B, A, C] class logits, class 0 background.
    loc_targets: f32[B, A, 4] from matching.match.
    cls_targets: i32[B, A] from matching.match, 0 background.
    neg_pos_ratio: hard negatives per positive, per image.
    loc_weight: alpha.

  Returns:
    (loss scalar, dict with 'loc' and 'conf' (each already divided by N) and
    'num_pos' (N)), all float32.
  """
  loc_pred = loc_pred.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  positive = cls_targets > 0
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, cls_targets[..., None], axis=-1)[..., 0]
  cross_entropy = log_z - target_logit
  background_loss = jax.lax.stop_gradient(log_z - logits[..., 0])
  negative = hard_negatives(background_loss, positive, neg_pos_ratio)

  num_pos = jnp.sum(positive).astype(jnp.float32)
  denominator = jnp.maximum(num_pos, 1.0)
  loc = jnp.sum(jnp.where(positive[..., None], smooth_l1(loc_pred - loc_targets), 0.0))
  conf = jnp.sum(jnp.where(positive | negative, cross_entropy, 0.0))
  loc, conf = loc / denominator, conf / denominator
  return conf + loc_weight * loc, {'loc': loc, 'conf': conf, 'num_pos': num_pos}
