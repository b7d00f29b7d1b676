"""Several hosts as one run: joining, agreeing, preemption, failing fast.

A run on N hosts is N processes running the same command; process 0 also
runs JAX's coordination service. This module is the one place that knows it:
  initialize(config)   joins the cluster (config.cluster, JAX_* variables, or
                       what JAX detects: Cloud TPU, SLURM, Open MPI, k8s)
  agreement(what)      a block of host-local checks on every host; if it
                       fails on any host, every host raises, naming it (before
                       the first collective, so no host is left waiting in one)
  barrier(name)        every host waits for the others
  preemption(...)      SIGTERM to any host -> every host stops at one step
  fail(exc)            a host's failure in the middle of the run: it is
                       reported to the coordination service and this process
                       ends at once; hosts that then fail in a collective name
                       the host that failed first, and its error.

Without jax.distributed (one process) every function here is a no-op or
runs its block directly, and SIGTERM is caught by a Python handler.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, Optional

import jax
from absl import logging
from jax._src import distributed as jax_distributed  # the client: key-value store, liveness
from jax.experimental import multihost_utils

from ssd_jax import sharding

_FAILED_KEY = 'ssd_jax/failed/'  # + process id -> what went wrong there
# Environment variables read when the config leaves a field unset (JAX itself
# reads JAX_COORDINATOR_ADDRESS and JAX_LOCAL_DEVICE_IDS).
ENV_NUM_PROCESSES, ENV_PROCESS_ID = 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'
_HEARTBEAT_TIMEOUT_S = {'value': 100}  # as initialize set it: how long naming the dead may take


class HostFailed(RuntimeError):
  """Another host of this run failed (or this one, seen from another); the run stopped."""


def is_multihost() -> bool:
  return jax.process_count() > 1


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} must be an integer.') from None


def initialize(config) -> None:
  """jax.distributed.initialize from config.cluster; a field left None falls back
  to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, then to what
  JAX detects. CPU collectives go through gloo (a CPU run of several processes)."""
  c = config.cluster
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  num_processes = c.num_processes if c.num_processes is not None else _env_int(
      ENV_NUM_PROCESSES)
  process_id = c.process_id if c.process_id is not None else _env_int(ENV_PROCESS_ID)
  where = c.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS') or 'detected'
  print(f'joining the cluster (coordinator {where}, process {process_id} of {num_processes}); '
        f'waiting up to {c.initialization_timeout_s} s for every host. A host that never '
        f'starts ends this one with "DEADLINE_EXCEEDED" from JAX.', file=sys.stderr, flush=True)
  try:
    jax.distributed.initialize(
        coordinator_address=c.coordinator_address, num_processes=num_processes,
        process_id=process_id, initialization_timeout=c.initialization_timeout_s,
        heartbeat_timeout_seconds=c.heartbeat_timeout_s,
        shutdown_timeout_seconds=c.shutdown_timeout_s)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f'train.distributed=True, but the cluster is not known: {e}. On hosts JAX cannot '
        f'detect (Cloud TPU, SLURM, Open MPI, k8s are detected), set cluster.coordinator_address '
        f'(host:port of process 0), cluster.num_processes and cluster.process_id, or '
        f'JAX_COORDINATOR_ADDRESS, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}.') from e
  _HEARTBEAT_TIMEOUT_S['value'] = c.heartbeat_timeout_s
  logging.info('process %d of %d; %d local of %d devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _client():
  return jax_distributed.global_state.client


def barrier(name: str) -> None:
  """Every host waits here for the others (a no-op on one host)."""
  if is_multihost():
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def agreement(what: str) -> Iterator[None]:
  """Runs the block on every host; if it raises on any, every host raises.

  The failing host re-raises its own error; the others raise HostFailed with
  each failed host's error. Use it only where every host enters it and no host
  is inside a collective (leaving it is itself one).
  """
  if not is_multihost():
    yield
    return
  try:
    yield
  except Exception as e:  # noqa: BLE001 - every host must learn of any failure
    _agree(what, e)
    raise
  _agree(what, None)


def _agree(what: str, error: Optional[Exception]) -> None:
  """Tells every host this host's outcome; raises HostFailed when another failed."""
  outcomes = sharding.gather_objects(None if error is None else f'{type(error).__name__}: '
                                     f'{error}')
  if error is not None:
    error.agreed = True  # every host knows: they can all end the normal way (see fail)
    return
  failed = {host: text for host, text in enumerate(outcomes) if text is not None}
  if failed:
    lines = '; '.join(f'host {h}: {t}' for h, t in failed.items())
    stop = HostFailed(f'{what} failed on {len(failed)} of {len(outcomes)} hosts ({lines}). '
                      f'Fix it there and start the same command on every host again.')
    stop.agreed = True
    raise stop


# --- preemption -----------------------------------------------------------------

class Preemption:
  """Whether to stop and save after a step, because some host got SIGTERM.

  One host: a Python SIGTERM handler (the previous one comes back on exit).
  Several: JAX's preemption service (it catches SIGTERM on each host and
  agrees on one step for all, `mngr.reached_preemption`); no Python handler,
  which would take SIGTERM from it. A context manager; `reached(step)` must
  be called after every step, on every host.
  """

  def __init__(self, mngr):
    self._mngr = mngr
    self._event = threading.Event()
    self._previous = None

  def __enter__(self):
    if not is_multihost() and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    if is_multihost():
      return self._mngr.reached_preemption(step)
    return self._event.is_set()


# --- failing fast ----------------------------------------------------------------

def _reports() -> dict[int, str]:
  """What hosts reported of their own failures (fail), by process id."""
  client = _client()
  if client is None:
    return {}
  try:
    return {int(k.rsplit('/', 1)[-1]): v for k, v in client.key_value_dir_get(_FAILED_KEY)}
  except Exception:  # noqa: BLE001 - the coordination service may be gone with host 0
    return {}


def _dead_hosts(wait_s: float) -> list[int]:
  """Hosts the coordination service no longer hears. Asking is itself a barrier
  of the live hosts, answered once a dead host misses its heartbeats, so it
  runs in a thread and gives up (no names) after `wait_s`."""
  answer: list = []

  def ask():
    try:
      answer.append(_client().get_live_nodes(list(range(jax.process_count()))))
    except Exception:  # noqa: BLE001 - the coordination service may be gone too
      pass

  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(wait_s)
  if not answer:
    return []
  return sorted(set(range(jax.process_count())) - set(answer[0]))


# Texts of errors that a collective raises when another host went away.
PEER_FAILURE_MARKERS = ('Gloo', 'gloo', 'Connection closed by peer', 'Connection reset',
                        'coordination service', 'UNAVAILABLE', 'DEADLINE_EXCEEDED', 'NCCL')


def is_peer_failure(error: BaseException) -> bool:
  """Whether `error` says another host stopped (a failed collective), rather
  than this host's own failure."""
  return isinstance(error, HostFailed) or any(m in str(error) for m in PEER_FAILURE_MARKERS)


def explain(error: BaseException, wait_s: float = 30.0) -> str:
  """What a multi-host failure means, from this host's side: its own error; or,
  when a collective failed because another host went, that host and the error
  it reported, else the hosts that stopped answering (waits up to `wait_s`)."""
  me = jax.process_index()
  if isinstance(error, HostFailed):
    return str(error)
  if not is_peer_failure(error):
    return f'host {me} failed: {type(error).__name__}: {error}'
  resume = ('start the same command on every host: training resumes from the last '
            'checkpoint.')
  others = {h: t for h, t in _reports().items() if h != me}
  if others:
    lines = '; '.join(f'host {h} failed: {t}' for h, t in sorted(others.items()))
    return f'{lines}. Host {me} stopped with it. Fix the cause on that host, then {resume}'
  dead = _dead_hosts(wait_s)
  who = (f'host{"s" * (len(dead) > 1)} {", ".join(map(str, dead))}' if dead
         else 'another host')
  return (f'{who} stopped without a word (killed, out of memory, or its machine went away); '
          f'host {me} stopped with it ({type(error).__name__}: {str(error)[:300]}). See that '
          f'host\'s log, then {resume}')


def fail(error: BaseException, exit_code: int = 1) -> None:
  """Ends this process of a multi-host run: prints what happened, from this host's side.

  An error every host learnt of (cluster.agree) ends the normal way, every
  host through JAX's shutdown barrier (SystemExit). Any other error ends the
  process at once, without that barrier, which would wait for hosts that are
  gone or stuck in a collective: this host's own error is first reported to
  the others (the coordination service's key-value store); a collective
  that failed because another host went says so before asking which.
  """
  me = jax.process_index()
  if getattr(error, 'agreed', False):
    _say(me, explain(error))
    raise SystemExit(exit_code)
  if is_peer_failure(error):
    _say(me, f'a collective failed because another host stopped ({str(error)[:200]}); '
             f'asking the coordination service which host.')
  else:
    try:
      _client().key_value_set(f'{_FAILED_KEY}{me}', f'{type(error).__name__}: {error}'[:4000])
    except Exception:  # noqa: BLE001
      pass
  _say(me, explain(error, wait_s=_HEARTBEAT_TIMEOUT_S['value'] + 5))
  os._exit(exit_code)  # noqa: SLF001 - see the docstring


def _say(me: int, message: str) -> None:
  logging.error('%s', message)
  print(f'[host {me}] {message}', file=sys.stderr, flush=True)
  sys.stdout.flush()
