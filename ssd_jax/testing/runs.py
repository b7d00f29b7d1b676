"""One-call shortcuts over a training run, for tests: train a config into a
workdir, read its trained parameters back, initialise parameters from another
run's checkpoint."""
from __future__ import annotations

from typing import Optional

from jax.sharding import Mesh

from ssd_jax import checkpoints, train_loop
from ssd_jax.task import Task


def train(config, workdir: str, with_eval: bool = False):
  """Trains `config` to train.num_steps in `workdir` (resuming from its latest
  checkpoint); the final train state (train_loop.train)."""
  return train_loop.train(Task.of(config), workdir, with_eval)[0]


def restore_params(task, path: str, step: Optional[int] = None,
                   mesh: Optional[Mesh] = None) -> tuple[dict, int]:
  """(the trained parameters, step), not their moving average
  (checkpoints.restore_checkpoint_variables for the arguments)."""
  tree, step = checkpoints.restore_checkpoint_variables(task, path, step, mesh)
  return tree['params'], step


def load_matching_params(path: str, params) -> tuple[dict, dict]:
  """checkpoints.load_matching_variables for parameters alone: (params, report),
  paths in the report without the 'params/' prefix."""
  variables, report = checkpoints.load_matching_variables(path, {'params': params})
  strip = {k: [p.split('/', 1)[1] for p in v] for k, v in report.items()}
  return variables['params'], strip
