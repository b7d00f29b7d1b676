"""The recipe's optimiser: SGD with momentum, weight decay, warmup then steps."""
from __future__ import annotations

import flax
import jax.numpy as jnp
import optax


def learning_rate_schedule(optim_cfg) -> optax.Schedule:
  """lr(step) = base * warmup(step) * decay_factor ** (boundaries passed).

  warmup(step) = min(1, (step + 1) / warmup_steps): linear, and never zero, so
  the first step already moves. Boundaries count from step 0, as the recipe's.
  """
  base, warmup = optim_cfg.learning_rate, max(int(optim_cfg.warmup_steps), 1)
  boundaries = jnp.asarray(tuple(optim_cfg.boundaries or ()), jnp.int32)
  factor = optim_cfg.decay_factor

  def schedule(step):
    ramp = jnp.minimum(1.0, (step + 1) / warmup)
    passed = jnp.sum(step >= boundaries) if boundaries.size else 0
    return base * ramp * factor ** passed
  return schedule


def decay_mask(params):
  """True for convolution kernels: weight decay skips biases and the L2Norm scale,
  as the authors' Caffe recipe sets decay_mult 0 for biases."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: k[-1] == 'kernel' for k in flat})


def create_optimizer(optim_cfg) -> optax.GradientTransformation:
  """Optional global-norm clipping, then weight decay added to the gradient
  (the Caffe/PyTorch SGD form: g + wd * w), then SGD with momentum (the paper's)
  or Adam (optim.name='adam', for quick runs from scratch, e.g. configs/shapes.py)."""
  parts = []
  if optim_cfg.grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
  parts.append(optax.add_decayed_weights(optim_cfg.weight_decay, mask=decay_mask))
  schedule = learning_rate_schedule(optim_cfg)
  if optim_cfg.name == 'sgd':
    parts.append(optax.sgd(schedule, momentum=optim_cfg.momentum))
  elif optim_cfg.name == 'adam':
    parts.append(optax.adam(schedule))
  else:
    raise ValueError(f'optim.name={optim_cfg.name!r}; use "sgd" (the paper\'s) or "adam".')
  return optax.chain(*parts)
