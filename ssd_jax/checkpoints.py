"""A run's files on disk, and loading a trained model: the one place for both.

A workdir holds `config.json` (the config training ran with) and orbax
checkpoints of the train state in `checkpoints/<step>`. This module writes and
finds them, guards a workdir against a second run and against resuming with
an incompatible config, restores the whole train state (to resume; unreadable
steps are moved to `unreadable_checkpoints/` and the newest readable one is
used), the variables inference applies (to evaluate or detect: parameters,
BatchNorm statistics and the weights' moving average, no optimiser state; shapes
come from `jax.eval_shape(builders.init_variables)`), or every variable that
matches a new model (to fine-tune, `model.init_checkpoint`).

A checkpoint is the train state's tree: 'step', 'params', 'opt_state' and, where
the model has them, 'batch_stats' (BatchNorm) and 'ema_params' (optim.ema_decay).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

import flax
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh
from ml_collections import config_dict

from ssd_jax import builders, cluster, config_lib, paths, sharding

CONFIG_FILE = 'config.json'
LOCK_FILE = 'lock'
UNREADABLE = 'unreadable_checkpoints'


# --- config.json --------------------------------------------------------------

def save_config(config: config_dict.ConfigDict, folder: str) -> str:
  """Writes the config as folder/config.json (so a workdir describes itself);
  atomically: a crash leaves the old file or the new one, never half of one."""
  target = paths.path(folder) / CONFIG_FILE
  paths.write_text_atomic(target, config.to_json(indent=2))
  return str(target)


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
# VGG16's fields, which older versions kept under `model` before backbones had
# their own section.
MOVED_TO_BACKBONE = ('extras', 'atrous', 'fc_features', 'l2norm_scale')


def read_config(path: str) -> config_dict.ConfigDict:
  """A config written by `save_config`, on the current schema (unknown fields are errors)."""
  values = _tuples(json.loads(paths.path(path).read_text()))
  clip = values.get('anchors', {}).get('clip')
  if isinstance(clip, bool):  # before anchors.clip named its mode
    values['anchors']['clip'] = 'cxcywh' if clip else 'none'
  for section, name in REMOVED_FIELDS:
    values.get(section, {}).pop(name, None)
  model = values.get('model', {})
  moved = {k: model.pop(k) for k in MOVED_TO_BACKBONE if k in model}
  if moved:
    values['backbone'] = {**moved, **values.get('backbone', {})}
  c = config_lib.base_config(model.get('backbone', 'vgg16'))
  c.update(values)
  return c


def find_config(path: str) -> config_dict.ConfigDict:
  """The config.json saved by training in a workdir (or above a checkpoints folder)."""
  folder = paths.path(path)
  for _ in range(3):
    candidate = folder / CONFIG_FILE
    if candidate.is_file():
      return read_config(str(candidate))
    folder = folder.parent
  raise FileNotFoundError(f'no {CONFIG_FILE} in or above {path}; pass the config the model '
                          f'was trained with (--config=... or config=...).')


# --- one run per workdir, with the config its checkpoints were made with ------

class WorkdirInUseError(RuntimeError):
  """Another process is training in this workdir."""


class NoReadableCheckpointError(RuntimeError):
  """Every checkpoint step of a folder failed to load."""


def _holder() -> str:
  return (f'process {os.getpid()} on {socket.gethostname()} since '
          f'{time.strftime("%Y-%m-%d %H:%M:%S")} ({" ".join(sys.argv)})')


def _in_use(workdir: str, holder: str, extra: str = '') -> WorkdirInUseError:
  return WorkdirInUseError(
      f'--workdir={workdir} is in use by {holder}. Wait for that run to end, or give this '
      f'one another --workdir (two runs in one workdir overwrite each other\'s checkpoints).'
      f'{extra}')


class _NoCheck:
  """An flock cannot be lost while its process lives."""

  def check(self) -> None:
    pass


@contextlib.contextmanager
def _flock(workdir: str):
  """An flock on <workdir>/lock: the kernel releases it when its process ends,
  however it ends (kill -9 included), so a lock a dead run left is taken over
  without a word. The file names its holder and is removed on release."""
  path = os.path.join(str(paths.path(workdir)), LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    with open(path) as f:
      raise _in_use(workdir, f.read().strip() or 'another process') from None
  os.ftruncate(fd, 0)
  os.write(fd, _holder().encode())
  try:
    yield _NoCheck()
  finally:
    os.unlink(path)
    os.close(fd)


class Lease:
  """The run lock where the filesystem has no flock (a bucket): <workdir>/lock
  holds {holder, token, renewed (wall-clock seconds), lease_s}, rewritten every
  `renew_s` by a thread while the run lives.

  Taking it: a lock renewed less than lease_s ago refuses the run, naming its
  holder; else (none, or a dead run's, stale) this run writes its token, waits
  `settle_s`, and reads it back: of two runs that both found it free, the one
  whose write landed last holds it, the other is refused.

  What it guarantees, given a store with read-after-write consistency (GCS,
  S3) and host clocks within a few seconds: a run started while another renews
  the lock is refused; two runs started at once end with one holder, provided
  each write lands within settle_s. A run killed without release blocks the
  workdir for at most lease_s (the error says until when). A holder whose token
  was replaced (it stalled past lease_s and another run took over) learns it at
  its next renewal, and `check()` then stops it before it saves again.
  """

  def __init__(self, workdir: str, renew_s: float = 30.0, lease_s: float = 120.0,
               settle_s: float = 3.0):
    self.file = paths.path(workdir) / LOCK_FILE
    self.workdir, self.renew_s, self.lease_s, self.settle_s = workdir, renew_s, lease_s, settle_s
    self.token = uuid.uuid4().hex
    self.holder = _holder()
    self._stop, self._lost = threading.Event(), threading.Event()
    self._thread = threading.Thread(target=self._renew_forever, daemon=True)

  def _read(self) -> Optional[dict]:
    try:
      return json.loads(self.file.read_text())
    except (FileNotFoundError, ValueError):
      return None

  def _write(self) -> None:
    # Atomic: two runs writing at once must leave one whole lease, not a mix.
    paths.write_text_atomic(self.file, json.dumps(
        {'holder': self.holder, 'token': self.token, 'renewed': time.time(),
         'lease_s': self.lease_s}))

  def _refuse_if_live(self, lease: Optional[dict]) -> None:
    if lease and time.time() - lease['renewed'] < lease['lease_s']:
      until = time.strftime('%H:%M:%S', time.localtime(lease['renewed'] + lease['lease_s']))
      raise _in_use(self.workdir, lease['holder'],
                    f' Its lease runs until {until} unless renewed; a run that was killed '
                    f'without releasing it stops blocking the workdir then.')

  def acquire(self) -> 'Lease':
    self._refuse_if_live(self._read())
    self._write()
    time.sleep(self.settle_s)
    lease = self._read()
    if not lease or lease['token'] != self.token:
      self._refuse_if_live(lease or {'holder': 'another run', 'renewed': time.time(),
                                     'lease_s': self.lease_s})
    self._thread.start()
    return self

  def _renew_forever(self) -> None:
    while not self._stop.wait(self.renew_s):
      lease = self._read()
      if not lease or lease['token'] != self.token:
        logging.error('the lock of --workdir=%s was taken by %s', self.workdir,
                      (lease or {}).get('holder', 'nobody (deleted)'))
        self._lost.set()
        return
      self._write()

  def check(self) -> None:
    """Raises if another run took the lock (see the class docstring)."""
    if self._lost.is_set():
      lease = self._read() or {}
      raise _in_use(self.workdir, lease.get('holder', 'another run'),
                    ' This run stalled past its lease and another took over; it stops '
                    'here, without saving.')

  def release(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()
    lease = self._read()
    if lease and lease['token'] == self.token:
      self.file.unlink()


@contextlib.contextmanager
def workdir_lock(workdir: str, kind: Optional[str] = None):
  """Held while a training run uses the workdir; a second run refuses, naming the first.

  kind: 'flock' (local paths, the default there) or 'lease' (URLs, whose
  stores have no flock; see Lease). Yields an object whose check() raises
  if the lock was lost.
  """
  kind = kind or ('lease' if paths.is_url(workdir) else 'flock')
  if kind == 'flock':
    with _flock(workdir) as held:
      yield held
    return
  lease = Lease(workdir).acquire()
  try:
    yield lease
  finally:
    lease.release()


# Fields a resumed run must share with the run that made the checkpoints: they
# decide the parameters, what the heads predict, and the optimiser state.
RESUME_SECTIONS = ('model', 'anchors')
RESUME_FIELDS = ('optim.name',)
RESUME_FREE = ('model.init_checkpoint', 'model.init_from')  # used only by a fresh start


def _flat(config: config_dict.ConfigDict) -> dict:
  return flax.traverse_util.flatten_dict(config.to_dict(), sep='.')


def check_resumable(config, workdir: str) -> None:
  """Refuses, before anything is read or written, to resume the checkpoints in
  `workdir` with a config whose model differs from their config.json."""
  path, saved_steps = paths.path(workdir) / CONFIG_FILE, paths.path(workdir) / 'checkpoints'
  if not (path.is_file() and saved_steps.is_dir()
          and any(p.name.isdigit() for p in saved_steps.iterdir())):
    return
  saved, now = _flat(config_lib.validate(read_config(str(path)))), _flat(config)
  keys = [k for k in sorted(set(saved) | set(now))
          if (k.split('.')[0] in RESUME_SECTIONS or k in RESUME_FIELDS) and k not in RESUME_FREE]
  differ = [f'{k}: {saved.get(k)!r} in {CONFIG_FILE}, {now.get(k)!r} now' for k in keys
            if saved.get(k) != now.get(k)]
  if differ:
    raise ValueError(
        f'{workdir} holds checkpoints of another model; resuming would not fit them. '
        f'Differences: {"; ".join(differ)}. Use the values of {path} (it holds the config '
        f'the checkpoints were made with) or train in a new --workdir. Nothing was changed.')


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


def _readable_steps(mngr: ocp.CheckpointManager, load, on_unreadable=None):
  """(step, load(step)) of the newest step `load` can read; newer unreadable
  steps are logged and passed to on_unreadable(step). (None, None) if no step."""
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

def abstract_variables(config) -> dict:
  """Shapes and dtypes (jax.ShapeDtypeStruct) of the config's variables, no compute."""
  return jax.eval_shape(functools.partial(builders.init_variables, config), jax.random.key(0))


def abstract_params(config) -> dict:
  """Shapes and dtypes of the config's parameters, no compute."""
  return abstract_variables(config)['params']


def _inference_target(config, replicated) -> dict:
  """What a checkpoint holds for inference: params, batch_stats where the model
  has BatchNorm, and ema_params where the config averages the weights."""
  variables = abstract_variables(config)
  target = dict(variables)
  if config.optim.ema_decay:
    target['ema_params'] = variables['params']
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      target)


def restore_checkpoint_variables(config, path: str, step: Optional[int] = None,
                                 mesh: Optional[Mesh] = None) -> tuple[dict, int]:
  """A checkpoint's params, batch_stats and ema_params (what the config's model
  has; no optimiser state), replicated on `mesh`.

  Args:
    config: the config the checkpoint was trained with (validated).
    path: a workdir, its checkpoints folder, or one step folder.
    step: which step (default: the one `path` names, else the latest readable:
      a damaged newer step is logged and skipped).
    mesh: where to place them (default: every device).

  Returns:
    ({'params', ...}, step).
  """
  directory, named = location(path)
  target = _inference_target(config, sharding.replicated(mesh or sharding.make_mesh()))

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


def restore_variables(config, path: str, step: Optional[int] = None,
                      mesh: Optional[Mesh] = None) -> tuple[dict, int]:
  """(the variables inference applies, step): builders.inference_variables of the
  checkpoint (see restore_checkpoint_variables for the arguments)."""
  tree, step = restore_checkpoint_variables(config, path, step, mesh)
  return builders.inference_variables(tree), step


def restore_params(config, path: str, step: Optional[int] = None,
                   mesh: Optional[Mesh] = None) -> tuple[dict, int]:
  """(the trained parameters, step), not their moving average (see
  restore_checkpoint_variables for the arguments)."""
  tree, step = restore_checkpoint_variables(config, path, step, mesh)
  return tree['params'], step


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


def load_matching_params(path: str, params) -> tuple[dict, dict]:
  """load_matching_variables for parameters alone: (params, report), paths in
  the report without the 'params/' prefix."""
  variables, report = load_matching_variables(path, {'params': params})
  strip = {k: [p.split('/', 1)[1] for p in v] for k, v in report.items()}
  return variables['params'], strip
