"""Checkpoints of a workdir, and loading a trained model from them.

A workdir (ssd_jax.workdirs: its config.json and run lock) holds orbax
checkpoints of the train state in `checkpoints/<step>`. This module saves them
and restores the whole train state (to resume; unreadable
steps are moved to `unreadable_checkpoints/` and the newest readable one is
used), the variables inference applies (to evaluate or detect: parameters,
BatchNorm statistics and the weights' moving average, no optimiser state; shapes
come from `jax.eval_shape(builders.init_variables)`), or every variable that
matches a new model (to fine-tune, `model.init_checkpoint`).

A checkpoint is the train state's tree: 'step', 'params', 'opt_state' and, where
the model has them, 'batch_stats' (BatchNorm) and 'ema_params' (optim.ema_decay).
"""
from __future__ import annotations

import logging as py_logging
import sys
import time
import warnings
from typing import Optional

import flax
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from ssd_jax import builders, cluster, paths, sharding

UNREADABLE = 'unreadable_checkpoints'


class NoReadableCheckpointError(RuntimeError):
  """Every checkpoint step of a folder failed to load."""


# --- the train state, to resume -------------------------------------------------

def manager(workdir: str, config) -> ocp.CheckpointManager:
  """Asynchronous saves every train.checkpoint_every steps, the last
  train.keep_checkpoints kept."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=config.train.checkpoint_every,
      max_to_keep=config.train.keep_checkpoints,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(paths.path(workdir) / 'checkpoints', options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def location(path: str) -> tuple[str, Optional[int]]:
  """A workdir, its checkpoints folder, or one step's folder -> (checkpoints folder, step).

  The step is None (latest) unless `path` names one step's folder.
  """
  folder = paths.path(path)
  if not folder.is_dir():
    raise FileNotFoundError(f'{folder} does not exist; pass a workdir of a training run, its '
                            f'checkpoints/ folder, or one step folder inside it.')
  if (folder / 'checkpoints').is_dir():
    return str(folder / 'checkpoints'), None
  if folder.name.isdigit() and folder.parent.name == 'checkpoints':
    return str(folder.parent), int(folder.name)
  return str(folder), None


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


def _is_closed_loop_report(unraisable) -> bool:
  """Whether an unraisable exception is asyncio's 'Event loop is closed' from a
  callback posted to the loop (call_soon_threadsafe) from another thread."""
  tb, frames = unraisable.exc_traceback, []
  while tb is not None:
    frames.append(tb.tb_frame.f_code.co_name)
    tb = tb.tb_next
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed'
          and 'call_soon_threadsafe' in frames)


def _is_unretrieved_read_error(record: py_logging.LogRecord) -> bool:
  """Whether asyncio logs a tensorstore read's exception that nothing awaited."""
  error = record.exc_info[1] if record.exc_info else None
  return (str(record.msg).startswith(('Future exception was never retrieved',
                                      'Task exception was never retrieved'))
          and 'tensorstore' in str(error))


def _quiet_closed_loop_reports() -> None:
  """Stops Python printing the reports a failed orbax restore leaves behind.

  orbax-checkpoint (0.12) reads a checkpoint's arrays concurrently in an event
  loop that it closes as soon as one read fails; the reads still in flight then
  finish into the closed loop, from tensorstore's threads: Python prints each as
  'Exception ignored ... RuntimeError: Event loop is closed', and asyncio logs the
  other failed reads as 'Future exception was never retrieved'; a metadata read it
  never started warns, when collected, that it was never awaited. The failure
  itself is reported by _readable_steps; every other unraisable exception still
  reaches the hook installed before, asyncio's other messages its log, and other
  warnings the console.
  """
  warnings.filterwarnings('ignore', category=RuntimeWarning,  # each time: tests reset them
                          message=r"coroutine 'Store\._get_array_metadatas' was never awaited")
  previous = sys.unraisablehook
  if getattr(previous, 'ssd_jax_quiet', False):
    return

  def hook(unraisable) -> None:
    if not _is_closed_loop_report(unraisable):
      previous(unraisable)

  hook.ssd_jax_quiet = True
  sys.unraisablehook = hook
  py_logging.getLogger('asyncio').addFilter(lambda r: not _is_unretrieved_read_error(r))


def _readable_steps(mngr: ocp.CheckpointManager, load, on_unreadable=None):
  """(step, load(step)) of the newest step `load` can read; newer unreadable
  steps are logged and passed to on_unreadable(step). (None, None) if no step."""
  _quiet_closed_loop_reports()  # before reading: the reports can precede the exception
  failures = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return step, load(step)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in many ways
      failures.append(f'step {step}: {type(e).__name__}: {str(e)[:300]}')
      logging.warning('checkpoint step %d in %s is unreadable (%s); trying the next older one.',
                      step, mngr.directory, failures[-1])
      if on_unreadable:
        on_unreadable(step)
  if failures:
    raise NoReadableCheckpointError(
        f'no readable checkpoint in {mngr.directory}: {"; ".join(failures)}. Start a new '
        f'--workdir, or restore the checkpoint files.')
  return None, None


def restore_newest_readable(mngr: ocp.CheckpointManager, target, workdir: str):
  """(step, state) of the newest readable checkpoint, or (0, target) if none.

  An unreadable newer step (a truncated file, missing metadata) is moved, whole,
  to <workdir>/unreadable_checkpoints/<step> (nothing is deleted), so training
  can save that step again.
  """
  moved = []

  def set_aside(step: int) -> None:  # host 0 moves it; every host then reloads
    if jax.process_index() == 0:
      destination = paths.path(workdir) / UNREADABLE / (
          f'{step}_{time.strftime("%Y%m%d-%H%M%S")}')
      destination.parent.mkdir(parents=True, exist_ok=True)
      (paths.path(mngr.directory) / str(step)).rename(destination)
      logging.warning('moved unreadable checkpoint step %d to %s', step, destination)
    moved.append(step)

  step, state = _readable_steps(mngr, lambda s: restore(mngr, target, s), set_aside)
  if moved:
    cluster.barrier('unreadable checkpoints set aside')
    mngr.reload()
  return (0, target) if step is None else (step, state)


# --- the variables inference applies, to evaluate or detect --------------------

def _inference_target(task, replicated) -> dict:
  """What a checkpoint holds for inference: params, batch_stats where the model
  has BatchNorm, and ema_params where the config averages the weights."""
  variables = task.abstract_variables
  target = dict(variables)
  if task.config.optim.ema_decay:
    target['ema_params'] = variables['params']
  return sharding.placed(target, replicated)


def restore_checkpoint_variables(task, path: str, step: Optional[int] = None,
                                 mesh: Optional[Mesh] = None) -> tuple[dict, int]:
  """A checkpoint's params, batch_stats and ema_params (what the task's model
  has; no optimiser state), replicated on `mesh`.

  Args:
    task: the ssd_jax.task.Task of the config the checkpoint was trained with.
    path: a workdir, its checkpoints folder, or one step folder.
    step: which step (default: the one `path` names, else the latest readable:
      a damaged newer step is logged and skipped).
    mesh: where to place them (default: every device).

  Returns:
    ({'params', ...}, step).
  """
  directory, named = location(path)
  target = _inference_target(task, sharding.replicated(mesh or sharding.make_mesh()))

  def load(step):
    return mngr.restore(step, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))

  with ocp.CheckpointManager(directory) as mngr:
    step = step if step is not None else named
    if step is not None:  # asked for by number: that one or an error
      return load(pick_step(mngr, step)), step
    pick_step(mngr)  # a clear error when there is none
    step, tree = _readable_steps(mngr, load)  # the latest readable, read-only
  return tree, step


def restore_variables(task, path: str, step: Optional[int] = None,
                      mesh: Optional[Mesh] = None) -> tuple[dict, int]:
  """(the variables inference applies, step): builders.inference_variables of the
  checkpoint (see restore_checkpoint_variables for the arguments)."""
  tree, step = restore_checkpoint_variables(task, path, step, mesh)
  return builders.inference_variables(tree), step


# --- matching parameters, to fine-tune -----------------------------------------

def load_matching_variables(path: str, variables: dict) -> tuple[dict, dict]:
  """Initialisation from another run or a converted checkpoint.

  Every variable of `variables` ({'params', maybe 'batch_stats'}) whose
  collection, path and shape also appear in the inference variables of the
  checkpoint at `path` (a workdir, its checkpoints folder or one step folder;
  the latest step unless one is named; the moving average of the weights where
  it has one) takes the saved value; the rest keep their initial values. A
  pretrained base fills the backbone; a detector trained on other classes fills
  all but the class heads, whose shapes differ.

  Returns:
    (variables as host NumPy arrays, {'restored': [paths], 'kept': [paths]}),
    paths as 'collection/module/.../name'.
  """
  directory, step = location(path)
  with ocp.CheckpointManager(directory) as mngr:
    try:
      step = pick_step(mngr, step)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'model.init_checkpoint={path}: {e}') from e
    saved = mngr.restore(step, args=ocp.args.StandardRestore())
  saved = flax.traverse_util.flatten_dict(
      jax.device_get(builders.inference_variables(saved)))
  current = flax.traverse_util.flatten_dict(jax.device_get(dict(variables)))
  merged, report = {}, {'restored': [], 'kept': []}
  for key, value in current.items():
    match = key in saved and saved[key].shape == value.shape
    merged[key] = saved[key].astype(value.dtype) if match else value
    report['restored' if match else 'kept'].append('/'.join(key))
  if not any(p.startswith('params/') and p.endswith('kernel') for p in report['restored']):
    raise ValueError(f'model.init_checkpoint={path} (step {step}) shares no convolution '
                     f'kernel (same parameter name and shape) with this model; check '
                     f'model.width, model.sources and '
                     f'backbone.extras against the checkpoint\'s config.')
  return flax.traverse_util.unflatten_dict(merged), report


def initialise_from(state, path: str, mesh: Mesh):
  """A fresh train state with the variables `path` provides (parameters and
  BatchNorm statistics, see load_matching_variables), replicated on the mesh;
  optimiser state and step stay fresh, and a moving average of the weights
  starts from the loaded ones."""
  variables = {'params': state.params}
  if state.batch_stats is not None:
    variables['batch_stats'] = state.batch_stats
  variables, report = load_matching_variables(path, variables)
  logging.info('initialised %d variables from %s; %d keep their initial values: %s',
               len(report['restored']), path, len(report['kept']), report['kept'])
  variables = jax.device_put(variables, sharding.replicated(mesh))
  return state.replace(params=variables['params'], batch_stats=variables.get('batch_stats'),
                       ema_params=None if state.ema_params is None else variables['params'])
