"""Orbax checkpoints of the train state in `<workdir>/checkpoints`."""
from __future__ import annotations

import os
from typing import Optional

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


def restore(mngr: ocp.CheckpointManager, target, step: Optional[int] = None):
  """The state saved at `step` (default: the latest), placed like `target`."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {mngr.directory}; train first, or point '
                            f'--workdir at a run that has saved one.')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
