"""The released recipe's optimiser: SGD with momentum as Caffe runs it, and its schedule.

The authors' solver (ssd_pascal.py on Caffe's SGDSolver), per parameter w with
gradient g:
  v <- momentum * v + lr * lr_mult * (g + weight_decay * decay_mult * w)
  w <- w - v
with lr_mult 1 and decay_mult 1 for convolution kernels and the conv4_3 L2Norm
scale, lr_mult 2 and decay_mult 0 for biases (docs/recipe.md). Momentum runs
over learning-rate-scaled steps, as in Caffe, so a learning-rate drop takes
effect gradually rather than rescaling the whole velocity at once.
"""
from __future__ import annotations

import flax
import jax.numpy as jnp
import optax


def learning_rate_schedule(optim_cfg) -> optax.Schedule:
  """lr(step) = base * warmup(step) * decay_factor ** (boundaries passed).

  warmup(step) = min(1, (step + 1) / warmup_steps), or 1 without warmup (the
  recipe's; reproductions often add one). Boundaries count from step 0.
  """
  base, warmup = optim_cfg.learning_rate, max(int(optim_cfg.warmup_steps), 1)
  boundaries = jnp.asarray(tuple(optim_cfg.boundaries or ()), jnp.int32)
  factor = optim_cfg.decay_factor

  def schedule(step):
    ramp = jnp.minimum(1.0, (step + 1) / warmup)
    passed = jnp.sum(step >= boundaries) if boundaries.size else 0
    return base * ramp * factor ** passed
  return schedule


def _mask(params, keep):
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: keep(k) for k in flat})


def decay_mask(params):
  """True where the recipe decays weights: convolution kernels and the L2Norm scale."""
  return _mask(params, lambda path: path[-1] in ('kernel', 'scale'))


def bias_mask(params):
  """True for biases, which learn at optim.bias_lr_mult times the rate, undecayed."""
  return _mask(params, lambda path: path[-1] == 'bias')


def create_optimizer(optim_cfg) -> optax.GradientTransformation:
  """Optional global-norm clipping (not in the recipe), weight decay added to the
  gradient, then Caffe's SGD with momentum (the paper's) or Adam
  (optim.name='adam', for quick runs from scratch, e.g. configs/shapes.py)."""
  parts = []
  if optim_cfg.grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
  parts.append(optax.add_decayed_weights(optim_cfg.weight_decay, mask=decay_mask))
  schedule = learning_rate_schedule(optim_cfg)
  if optim_cfg.name == 'sgd':
    parts += [optax.masked(optax.scale(optim_cfg.bias_lr_mult), bias_mask),
              optax.scale_by_learning_rate(schedule),
              optax.trace(decay=optim_cfg.momentum)]
  elif optim_cfg.name == 'adam':
    parts.append(optax.adam(schedule))
  else:
    raise ValueError(f'optim.name={optim_cfg.name!r}; use "sgd" (the paper\'s) or "adam".')
  return optax.chain(*parts)
