"""The MultiBox loss: smooth L1 on positives, cross-entropy with hard negatives.

L = (L_conf + alpha * L_loc) / N, N = matched default boxes in the whole batch
(the authors' normalisation, normalize='batch'); L = 0 when N = 0. With
normalize='image' (NVIDIA's SSD300-ResNet50, ssd/model.py Loss), each image's
sum is divided by its own matched boxes and L is the mean over the batch's
images, an image without matches counting 0. Everything in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(x):
  """Elementwise Huber with delta 1: 0.5 x^2 if |x| < 1 else |x| - 0.5."""
  ax = jnp.abs(x)
  return jnp.where(ax < 1.0, 0.5 * jnp.square(x), ax - 0.5)


def _ordered_bits(x):
  """f32 -> u32 whose unsigned order is the floats' order (-inf < ... < inf < NaN;
  -0.0 and 0.0 equal, as when sorting)."""
  x = x.astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def kth_largest_bits(keys, k):
  """Per row, the k-th largest of u32 keys [B, A] (k: i32 [B, 1], 1 <= k <= A): the
  largest t with at least k keys >= t, built bit by bit from the top (32 counting
  passes over the row, no sort). Rows with k = 0 get 0xFFFFFFFF."""
  def bit(i, t):
    candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    enough = jnp.sum(keys >= candidate, axis=1, keepdims=True) >= k
    return jnp.where(enough, candidate, t)

  return jax.lax.fori_loop(0, 32, bit, jnp.zeros(k.shape, jnp.uint32))


def hard_negatives(background_loss, positive, neg_pos_ratio: float):
  """Per image, the negatives of highest background loss, ratio x positives.

  Selected: the num_neg highest background losses among the negatives, num_neg
  = min(floor(ratio x positives), negatives); ties go to the lower default box
  index, as a stable descending sort's first num_neg would. Found by selecting
  the num_neg-th largest loss (kth_largest_bits) rather than sorting each row,
  which took 8% of the quickstart's train step on CPU.

  Args:
    background_loss: f32[B, A] cross-entropy of predicting background.
    positive: bool[B, A].
    neg_pos_ratio: negatives kept per positive (3 in the paper).

  Returns:
    bool[B, A] selected negatives.
  """
  num_pos = jnp.sum(positive, axis=1, keepdims=True)
  num_neg = jnp.minimum(jnp.floor(neg_pos_ratio * num_pos),
                        positive.shape[1] - num_pos).astype(jnp.int32)
  keys = jnp.where(positive, jnp.uint32(0), _ordered_bits(background_loss))
  threshold = kth_largest_bits(keys, num_neg)
  above = (keys > threshold) & ~positive
  tied = (keys == threshold) & ~positive
  room = num_neg - jnp.sum(above, axis=1, keepdims=True)  # ties taken in index order
  return (above | (tied & (jnp.cumsum(tied, axis=1) <= room))) & (num_neg > 0)


NORMALIZE = ('batch', 'image')


def multibox_loss(loc_pred, logits, loc_targets, cls_targets, neg_pos_ratio: float = 3.0,
                  loc_weight: float = 1.0, normalize: str = 'batch'):
  """The SSD training loss.

  Args:
    loc_pred: f[B, A, 4] predicted offsets (encoded, see box_utils.encode).
    logits: f[B, A, C] class logits, class 0 background.
    loc_targets: f32[B, A, 4] from matching.match.
    cls_targets: i32[B, A] from matching.match, 0 background.
    neg_pos_ratio: hard negatives per positive, per image.
    loc_weight: alpha.
    normalize: 'batch' or 'image' (see the module doc).

  Returns:
    (loss scalar, dict with 'loc' and 'conf' (each already normalised) and
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

  loc_terms = jnp.where(positive[..., None], smooth_l1(loc_pred - loc_targets), 0.0)
  conf_terms = jnp.where(positive | negative, cross_entropy, 0.0)
  num_pos = jnp.sum(positive).astype(jnp.float32)
  if normalize == 'batch':
    denominator = jnp.maximum(num_pos, 1.0)
    loc, conf = jnp.sum(loc_terms) / denominator, jnp.sum(conf_terms) / denominator
  else:
    per_image = jnp.sum(positive, axis=1).astype(jnp.float32)  # [B]
    weight = jnp.where(per_image > 0, 1.0 / jnp.maximum(per_image, 1.0), 0.0)
    loc = jnp.mean(jnp.sum(loc_terms, axis=(1, 2)) * weight)
    conf = jnp.mean(jnp.sum(conf_terms, axis=1) * weight)
  return conf + loc_weight * loc, {'loc': loc, 'conf': conf, 'num_pos': num_pos}
