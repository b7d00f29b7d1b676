"""A run's files on disk, and loading a trained model: the one place for both.

A workdir holds `config.json` (the config training ran with) and orbax
checkpoints of the train state in `checkpoints/<step>`. This module writes and
finds them, restores the whole train state (to resume), the parameters alone
(to evaluate or detect: no optimiser is built; shapes come from
`jax.eval_shape(builders.init_params)`), or every parameter that matches a new
model (to fine-tune, `model.init_checkpoint`).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional

import flax
import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from ml_collections import config_dict

from ssd_jax import builders, config_lib, sharding

CONFIG_FILE = 'config.json'


# --- config.json --------------------------------------------------------------

def save_config(config: config_dict.ConfigDict, folder: str) -> str:
  """Writes the config as folder/config.json (so a workdir describes itself)."""
  path = os.path.join(folder, CONFIG_FILE)
  with open(path, 'w') as f:
    f.write(config.to_json(indent=2))
  return path


def _tuples(value):
  """JSON lists back to the tuples the schema holds."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


# Fields older versions wrote that no longer exist (the input pipeline reads by
# index: no shuffle buffer, no shrinking before augmentation).
REMOVED_FIELDS = (('data', 'shuffle_buffer'), ('data', 'max_image_side'))


def read_config(path: str) -> config_dict.ConfigDict:
  """A config written by `save_config`, on the current schema (unknown fields are errors)."""
  with open(path) as f:
    values = _tuples(json.load(f))
  clip = values.get('anchors', {}).get('clip')
  if isinstance(clip, bool):  # before anchors.clip named its mode
    values['anchors']['clip'] = 'cxcywh' if clip else 'none'
  for section, name in REMOVED_FIELDS:
    values.get(section, {}).pop(name, None)
  c = config_lib.base_config()
  c.update(values)
  return c


def find_config(path: str) -> config_dict.ConfigDict:
  """The config.json saved by training in a workdir (or above a checkpoints folder)."""
  folder = os.path.abspath(path)
  for _ in range(3):
    candidate = os.path.join(folder, CONFIG_FILE)
    if os.path.isfile(candidate):
      return read_config(candidate)
    folder = os.path.dirname(folder)
  raise FileNotFoundError(f'no {CONFIG_FILE} in or above {path}; pass the config the model '
                          f'was trained with (--config=... or config=...).')


# --- the train state, to resume -------------------------------------------------

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


# --- parameters only, to evaluate or detect ------------------------------------

def abstract_params(config) -> dict:
  """Shapes and dtypes (jax.ShapeDtypeStruct) of the config's parameters, no compute."""
  return jax.eval_shape(functools.partial(builders.init_params, config), jax.random.key(0))


def restore_params(config, path: str, step: Optional[int] = None,
                   mesh: Optional[Mesh] = None) -> tuple[dict, int]:
  """Model parameters (no optimiser state) from an orbax checkpoint, replicated on `mesh`.

  Args:
    config: the config the checkpoint was trained with (validated).
    path: a workdir, its checkpoints folder, or one step folder.
    step: which step (default: the one `path` names, else the latest).
    mesh: where to place them (default: every device).

  Returns:
    (params, step).
  """
  directory, named = location(path)
  replicated = sharding.replicated(mesh or sharding.make_mesh())
  target = {'params': jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      abstract_params(config))}
  with ocp.CheckpointManager(directory) as mngr:
    step = pick_step(mngr, step if step is not None else named)
    restored = mngr.restore(step, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  return restored['params'], step


# --- matching parameters, to fine-tune -----------------------------------------

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
