"""A workdir on disk, apart from its checkpoints: the config it holds, its run lock.

A workdir holds `config.json` (the config training ran with; configs of older
versions are read with their fields moved or dropped), a `lock` while a run
trains there (an flock on a local or shared filesystem, a lease on a bucket),
and `checkpoints/` (ssd_jax.checkpoints). This module writes and finds the
config, guards a workdir against a second run, and refuses to resume its
checkpoints with a config whose model differs.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Optional

import flax
from absl import logging
from ml_collections import config_dict

from ssd_jax import config_lib, paths

CONFIG_FILE = 'config.json'
LOCK_FILE = 'lock'


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


def check_resumable(config, workdir: str) -> bool:
  """Whether `workdir` holds checkpoints to resume (step folders and config.json);
  refuses, before anything is read or written, to resume them with a config
  whose model differs from their config.json."""
  path, saved_steps = paths.path(workdir) / CONFIG_FILE, paths.path(workdir) / 'checkpoints'
  if not (path.is_file() and saved_steps.is_dir()
          and any(p.name.isdigit() for p in saved_steps.iterdir())):
    return False
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
  return True
