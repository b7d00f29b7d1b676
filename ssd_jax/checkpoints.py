"""Orbax checkpoints of the train state in `<workdir>/checkpoints`."""
from __future__ import annotations

import os
from typing import Optional

import flax
import jax
import orbax.checkpoint as ocp


def manager(workdir: str, config) -> ocp.CheckpointManager:
  """Asynchronous saves every train.checkpoint_every steps, the last
  train.keep_checkpoints kept."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=config.train.checkpoint_every,
      max_to_keep=config.train.keep_checkpoints,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def location(path: str) -> tuple[str, Optional[int]]:
  """A workdir, its checkpoints folder, or one step's folder -> (checkpoints folder, step).

  The step is None (latest) unless `path` names one step's folder.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} does not exist; pass a workdir of a training run, its '
                            f'checkpoints/ folder, or one step folder inside it.')
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  name = os.path.basename(path)
  if name.isdigit() and os.path.basename(os.path.dirname(path)) == 'checkpoints':
    return os.path.dirname(path), int(name)
  return path, None


def pick_step(mngr: ocp.CheckpointManager, step: Optional[int] = None) -> int:
  """`step` (default: the latest) if the manager holds it; else a clear error."""
  step = mngr.latest_step() if step is None else step
  if step is None or step not in mngr.all_steps():
    raise FileNotFoundError(
        f'no checkpoint{"" if step is None else f" for step {step}"} in {mngr.directory} '
        f'(steps there: {list(mngr.all_steps()) or "none"}); train first, or point at a '
        f'workdir that has one.')
  return step


def restore(mngr: ocp.CheckpointManager, target, step: Optional[int] = None):
  """The state saved at `step` (default: the latest), placed like `target`."""
  step = pick_step(mngr, step)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def load_matching_params(path: str, params) -> tuple[dict, dict]:
  """Initialisation from another run or a converted checkpoint.

  Every parameter of `params` whose path and shape also appear under "params"
  in the checkpoint at `path` (a workdir, its checkpoints folder or one step
  folder; the latest step unless one is named) takes the saved value; the rest
  keep their initial values. A pretrained base fills the backbone; a detector
  trained on other classes fills all but the class heads, whose shapes differ.

  Returns:
    (params as host NumPy arrays, {'restored': [paths], 'kept': [paths]}).
  """
  directory, step = location(path)
  with ocp.CheckpointManager(directory) as mngr:
    try:
      step = pick_step(mngr, step)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'model.init_checkpoint={path}: {e}') from e
    saved = mngr.restore(step, args=ocp.args.StandardRestore())
  saved = flax.traverse_util.flatten_dict(jax.device_get(saved.get('params', saved)))
  current = flax.traverse_util.flatten_dict(jax.device_get(params))
  merged, report = {}, {'restored': [], 'kept': []}
  for key, value in current.items():
    match = key in saved and saved[key].shape == value.shape
    merged[key] = saved[key].astype(value.dtype) if match else value
    report['restored' if match else 'kept'].append('/'.join(key))
  if not any(p.endswith('kernel') for p in report['restored']):
    raise ValueError(f'model.init_checkpoint={path} (step {step}) shares no convolution '
                     f'kernel (same parameter name and shape) with this model; check '
                     f'model.width, model.sources and '
                     f'model.extras against the checkpoint\'s config.')
  return flax.traverse_util.unflatten_dict(merged), report
