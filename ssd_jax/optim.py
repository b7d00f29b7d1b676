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

import functools

import flax
import jax
import jax.numpy as jnp
import optax


def _warmup(optim_cfg) -> optax.Schedule:
  """The warmup factor: 1 without warmup; min(1, (step + 1) / warmup_steps) by
  default; from optim.warmup_start_factor linearly to 1 at warmup_steps when that
  is set (torchvision's LinearLR warmup: 0.001 over 1000 steps)."""
  steps, start = int(optim_cfg.warmup_steps), optim_cfg.warmup_start_factor
  if steps <= 0:
    return lambda step: 1.0
  if start is not None:
    return optax.linear_schedule(start, 1.0, steps)
  return lambda step: jnp.minimum(1.0, (step + 1) / steps)


def learning_rate_schedule(optim_cfg, num_steps: int | None = None,
                           batch_size: int | None = None) -> optax.Schedule:
  """lr(step) = base * warmup(step) * decay(step).

  base: optim.learning_rate, times batch_size / optim.lr_batch_size when that is
  set (the linear scaling rule: a recipe's rate at its batch, e.g. torchvision's
  0.15 at 192, carried to this run's global batch).

  decay: optim.schedule 'steps' multiplies by decay_factor at each of
  optim.boundaries passed (the recipe's; boundaries count from step 0);
  'cosine' is optax's cosine decay from 1 to 0 over num_steps (train.num_steps).
  warmup: see _warmup (the recipe has none; reproductions often add one).
  """
  base, warmup = optim_cfg.learning_rate, _warmup(optim_cfg)
  if optim_cfg.lr_batch_size and batch_size:
    base = base * batch_size / optim_cfg.lr_batch_size
  if optim_cfg.schedule == 'cosine':
    if not num_steps:
      raise ValueError('optim.schedule="cosine" decays over train.num_steps, which is not set.')
    cosine = optax.cosine_decay_schedule(1.0, num_steps)
    return lambda step: base * warmup(step) * cosine(step)
  boundaries = jnp.asarray(tuple(optim_cfg.boundaries or ()), jnp.int32)
  factor = optim_cfg.decay_factor

  def schedule(step):
    passed = jnp.sum(step >= boundaries) if boundaries.size else 0
    return base * warmup(step) * factor ** passed
  return schedule


def roles_by_name(params):
  """Roles read from leaf names, for a bare parameter tree of convolutions and
  L2Norm only (kernel, scale: weight; bias: bias). Models with normalisation
  layers give their roles instead (Task.roles): a BatchNorm scale is
  named like the L2Norm scale but is not a weight."""
  names = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
  flat = flax.traverse_util.flatten_dict(params)
  unknown = [k for k in flat if k[-1] not in names]
  if unknown:
    raise ValueError(f'no role for parameters {["/".join(k) for k in unknown]}; pass the '
                     f'model\'s roles (Task.roles).')
  return flax.traverse_util.unflatten_dict({k: names[k[-1]] for k in flat})


def _mask(roles, wanted) -> callable:
  """An optax mask: True where the role is in `wanted`. roles: a tree of role
  names like the parameters, or None (roles_by_name of the parameters)."""
  def mask(params):
    tree = roles_by_name(params) if roles is None else roles
    return jax.tree.map(lambda role: role in wanted, tree)
  return mask


def decay_mask(params, roles=None, decayed=('weight',)):
  """True where weights decay: the recipe decays kernels and the L2Norm scale."""
  return _mask(roles, decayed)(params)


def bias_mask(params, roles=None):
  """True for biases, which learn at optim.bias_lr_mult times the rate."""
  return _mask(roles, ('bias',))(params)


def ema_update(ema, params, decay: float, step):
  """ema <- d ema + (1 - d) params with d = min(decay, (1 + step) / (10 + step)):
  the average forgets its random start quickly in the first steps (the warmup of
  TensorFlow's ExponentialMovingAverage with num_updates)."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), ema, params)


def schedule_of(config) -> optax.Schedule:
  """The run's learning-rate schedule (learning_rate_schedule with its steps and batch)."""
  return learning_rate_schedule(config.optim, config.train.num_steps, config.train.batch_size)


def create_optimizer(optim_cfg, roles=None, schedule: optax.Schedule | None = None
                     ) -> optax.GradientTransformation:
  """The run's optimiser over parameters whose roles (models.ssd.ROLES) `roles` gives (a tree
  like the parameters; None: roles_by_name), following `schedule` (None:
  learning_rate_schedule of optim_cfg alone; runs pass schedule_of(config)).

  Optional global-norm clipping (not in the recipe), weight decay added to the
  gradient of the roles in optim.weight_decay_roles, then one of:
    'sgd': Caffe's SGD with momentum (the paper's): v <- m v + lr g, biases at
      optim.bias_lr_mult times the rate;
    'sgd_torch': PyTorch's (torchvision's recipes): v <- m v + g, step lr v;
    'adam': for quick runs from scratch, e.g. configs/shapes.py.
  """
  parts = []
  if optim_cfg.grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
  decayed = tuple(optim_cfg.weight_decay_roles)
  parts.append(optax.add_decayed_weights(
      optim_cfg.weight_decay, mask=functools.partial(decay_mask, roles=roles, decayed=decayed)))
  schedule = schedule or learning_rate_schedule(optim_cfg)
  if optim_cfg.name in ('sgd', 'sgd_torch') and optim_cfg.bias_lr_mult != 1:
    parts.append(optax.masked(optax.scale(optim_cfg.bias_lr_mult),
                              functools.partial(bias_mask, roles=roles)))
  if optim_cfg.name == 'sgd':
    parts += [optax.scale_by_learning_rate(schedule), optax.trace(decay=optim_cfg.momentum)]
  elif optim_cfg.name == 'sgd_torch':
    parts += [optax.trace(decay=optim_cfg.momentum), optax.scale_by_learning_rate(schedule)]
  elif optim_cfg.name == 'adam':
    parts.append(optax.adam(schedule))
  else:
    raise ValueError(f'optim.name={optim_cfg.name!r}; use "sgd" (the paper\'s), "sgd_torch" '
                     f'or "adam".')
  return optax.chain(*parts)
