"""Several hosts, one run: the real command line on 2 and 4 processes on loopback.

Each process is `python -m ssd_jax.main ... --config.train.distributed=True`
with one CPU device, the cluster given by JAX_COORDINATOR_ADDRESS (127.0.0.1),
JAX_NUM_PROCESSES and JAX_PROCESS_ID, gloo collectives, and one shared
workdir. Only processes these tests start are signalled, by process id.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ssd_jax import config_lib
from ssd_jax.testing import commands, runs, synthetic
from ssd_jax.task import Task

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group('hosts')  # see pytest.ini
STEPS = 16  # 4 checkpoints; the faulty host raises at its 10th batch
HEARTBEAT_S = 5
# What gloo prints as it aborts a host (SIGABRT, no Python runs) whose collective
# partner died mid-message: one of the ways a survivor of a killed host stops.
GLOO_ABORT = "Received data size doesn't match expected size"
# One CPU device a host; LLVM's cheap passes only: compiling the initialisation
# then takes 3 s instead of 20 (every run here compiles with the same flags).
XLA_FLAGS = commands.ONE_DEVICE['XLA_FLAGS']

CONFIG = '''
from ssd_jax import config_lib
from ssd_jax.testing import commands, synthetic


def get_config():
  c = synthetic.squares_config(config_lib.load({voc300!r}), {root!r}, {steps})
  c.model.sources, c.anchors.aspect_ratios = ('conv4_3', 'conv7'), ((2,), (2, 3))  # no extras
  c.train.checkpoint_every, c.train.log_every, c.train.keep_checkpoints = 4, 2, 20
  c.eval.num_rendered = 2
  return c
'''


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
  folder = tmp_path_factory.mktemp('hosts')
  synthetic.squares_voc_folder(folder / 'squares', 16)
  path = folder / 'squares_config.py'
  path.write_text(CONFIG.format(voc300=str(ROOT / 'configs' / 'voc300.py'),
                                root=str(folder / 'squares'), steps=STEPS))
  return str(path)


STARTED: list = []  # every process these tests started, killed at the end of each test


@pytest.fixture(autouse=True)
def _kill_leftovers():
  yield
  while STARTED:
    process = STARTED.pop()
    if process.poll() is None:
      process.kill()
      process.wait()


class Hosts:
  """N processes of one multi-host run, each logging to its own file."""

  def __init__(self, n: int, config_file: str, workdir, *flags, mode='train', per_host=None,
               faulty=()):
    self.logs = [pathlib.Path(workdir).parent / f'{pathlib.Path(workdir).name}_host{i}_'
                 f'{time.monotonic_ns()}.log' for i in range(n)]
    port = free_port()
    self.procs = []
    for i in range(n):
      env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                 JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i), PYTHONUNBUFFERED='1',
                 XLA_FLAGS=XLA_FLAGS)
      program = [str(ROOT / 'tests' / 'faulty_host.py')] if i in faulty else ['-m', 'ssd_jax.main']
      command = [sys.executable, *program, f'--config={config_file}',
                 f'--workdir={workdir}', f'--mode={mode}', '--config.train.distributed=True',
                 f'--config.cluster.heartbeat_timeout_s={HEARTBEAT_S}', *flags,
                 *((per_host or {}).get(i, ()))]
      with open(self.logs[i], 'w') as log:
        self.procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                           stderr=subprocess.STDOUT))
    STARTED.extend(self.procs)

  def wait(self, timeout: float = 400) -> list[int]:
    """Exit codes, in process order; kills the processes on a timeout."""
    deadline = time.monotonic() + timeout
    try:
      return [p.wait(timeout=max(1, deadline - time.monotonic())) for p in self.procs]
    except subprocess.TimeoutExpired:
      for p in self.procs:
        p.kill()
      raise AssertionError(f'hosts still running after {timeout} s:\n{self.tail()}') from None

  def wait_stopped_after(self, start: float, timeout: float = 120) -> tuple[list[int], float]:
    codes = self.wait(timeout)
    return codes, time.monotonic() - start

  def output(self, i: int) -> str:
    return self.logs[i].read_text()

  def tail(self, chars: int = 3000) -> str:
    return '\n'.join(f'--- host {i}:\n{self.output(i)[-chars:]}' for i in range(len(self.logs)))

  def signal(self, i: int, sig) -> None:
    os.kill(self.procs[i].pid, sig)


def wait_for(condition, timeout: float = 300, every: float = 0.05, hosts: Hosts = None):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    if hosts and any(p.poll() is not None for p in hosts.procs):
      if condition():  # it came true as the host ended
        return
      raise AssertionError(f'a host ended early:\n{hosts.tail()}')
    time.sleep(every)
  raise AssertionError(f'timed out waiting{hosts and chr(10) + hosts.tail() or ""}')


def saved_steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() \
      else []


def params_at(config_file: str, workdir, step: int) -> dict:
  config = config_lib.validate(config_lib.load(config_file))
  params, _ = runs.restore_params(Task.of(config), str(workdir), step)
  return jax.tree.map(np.asarray, jax.device_get(params))


def assert_equal_trees(a, b, exact: bool):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if exact:
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6)


@pytest.fixture(scope='module')
def uninterrupted(config_file, tmp_path_factory):
  """A 2-host train_and_eval run to STEPS, never interrupted."""
  workdir = tmp_path_factory.mktemp('uninterrupted') / 'run'
  hosts = Hosts(2, config_file, workdir, mode='train_and_eval')
  assert hosts.wait() == [0, 0], hosts.tail()
  return workdir, hosts


def test_two_hosts_train_evaluate_once_and_write_once(config_file, uninterrupted):
  workdir, hosts = uninterrupted
  assert saved_steps(workdir) == list(range(4, STEPS + 1, 4))
  # Evaluation: each host its share of the 16 images, merged and counted once.
  result = json.loads((workdir / f'eval_{STEPS}' / 'metrics.json').read_text())
  assert result['num_images'] == 16
  from ssd_jax import evaluate
  config = config_lib.validate(config_lib.load(config_file))
  alone = evaluate.evaluate(Task.of(config), params_at(config_file, workdir, STEPS))  # this process
  assert alone['num_images'] == 16
  np.testing.assert_allclose(result['scalars']['mAP'], alone['scalars']['mAP'], atol=1e-4)
  # What is written once: by host 0 alone, and printed by it alone.
  assert 'evaluation at step' in hosts.output(0) and 'evaluation at step' not in hosts.output(1)
  assert len(list(workdir.glob('events.out.tfevents*'))) == 1
  assert (workdir / 'config.json').is_file() and not (workdir / 'lock').exists()
  assert not list(workdir.glob('.hosts_see_*')) and not list(workdir.glob('.write_test*'))
  assert len(list((workdir / 'detections').glob('*.jpg'))) == 2


def test_sigterm_to_one_host_then_kill_9_of_all_then_resume_gives_the_same_parameters(
    config_file, uninterrupted, tmp_path):
  """One workdir through both interruptions; the end equals the uninterrupted run."""
  workdir = tmp_path / 'run'
  hosts = Hosts(2, config_file, workdir)
  wait_for(lambda: 'loss=' in hosts.output(0), hosts=hosts)  # after the first summary
  start = time.monotonic()
  hosts.signal(1, signal.SIGTERM)
  codes, seconds = hosts.wait_stopped_after(start)
  assert codes == [75, 75], hosts.tail()
  said = [[line for line in hosts.output(i).splitlines() if line.startswith('SIGTERM: saved step')]
          for i in range(2)]
  assert said[0] and said[0] == said[1], hosts.tail()  # one step, the same on both
  step = int(said[0][0].split()[3])
  assert step < STEPS and saved_steps(workdir)[-1] == step
  print(f'SIGTERM to host 1: both hosts saved step {step} and exited 75 within {seconds:.1f} s')

  again = Hosts(2, config_file, workdir)  # the same command resumes ...
  wait_for(lambda: any(s > step for s in saved_steps(workdir)), hosts=again)
  for i in range(2):  # ... and is killed without warning
    again.signal(i, signal.SIGKILL)
  assert again.wait() == [-9, -9]
  assert f'resumed from step {step}' in again.output(0) + again.output(1)
  killed_at = saved_steps(workdir)[-1]
  assert killed_at < STEPS, 'the run ended before it was killed: nothing was resumed'
  print(f'kill -9 of both hosts: checkpoints {saved_steps(workdir)}; resuming')

  last = Hosts(2, config_file, workdir)
  assert last.wait() == [0, 0], last.tail()
  assert f'resumed from step {killed_at}' in last.output(0) + last.output(1)
  assert_equal_trees(params_at(config_file, workdir, STEPS),
                     params_at(config_file, uninterrupted[0], STEPS), exact=True)
  print(f'resumed from step {killed_at} to {STEPS}: parameters bit-equal to the uninterrupted run')


def test_a_host_that_fails_at_the_start_stops_every_host(config_file, tmp_path):
  workdir = tmp_path / 'run'
  start = time.monotonic()
  hosts = Hosts(2, config_file, workdir, per_host={1: [f'--config.data.root={tmp_path}/none']})
  codes, seconds = hosts.wait_stopped_after(start)
  assert codes == [1, 1], hosts.tail()
  print(f'host 1 without its data: exit codes {codes}, {seconds:.1f} s from the start')
  assert 'failed on 1 of 2 hosts (host 1: FileNotFoundError' in hosts.output(0), hosts.tail()
  assert '[host 1] host 1 failed: FileNotFoundError' in hosts.output(1), hosts.tail()
  assert not (workdir / 'config.json').exists() and not (workdir / 'checkpoints').exists()
  assert not (workdir / 'lock').exists()


def test_a_host_that_raises_during_training_stops_every_host(config_file, tmp_path):
  workdir = tmp_path / 'run'
  hosts = Hosts(2, config_file, workdir, faulty=(1,))
  wait_for(lambda: 4 in saved_steps(workdir), hosts=hosts)
  codes, seconds = hosts.wait_stopped_after(time.monotonic())
  assert codes == [1, 1], hosts.tail()
  print(f'host 1 raised at its 10th batch: exit codes {codes}, both stopped within {seconds:.1f} s '
        f'of the first checkpoint; checkpoints kept {saved_steps(workdir)}')
  assert '[host 1] host 1 failed: OSError: reading the training data failed' in hosts.output(1)
  assert ('[host 0] host 1 failed: OSError: reading the training data failed'
          in hosts.output(0)), hosts.tail()
  assert 'Shutdown barrier' not in hosts.output(0) + hosts.output(1)
  kept = saved_steps(workdir)  # what was saved before the fault (10th batch) stays readable
  assert 4 in kept and kept[-1] <= 8, kept
  assert params_at(config_file, workdir, kept[-1])


def test_four_hosts_one_killed_the_others_stop_then_all_resume(config_file, tmp_path):
  workdir, steps = tmp_path / 'run', 8  # resumed after step 4: four more steps are enough
  hosts = Hosts(4, config_file, workdir, f'--config.train.num_steps={steps}',
                mode='train_and_eval')
  wait_for(lambda: 4 in saved_steps(workdir), hosts=hosts)
  start = time.monotonic()
  hosts.signal(2, signal.SIGKILL)
  codes, seconds = hosts.wait_stopped_after(start, timeout=HEARTBEAT_S + 60)
  assert codes[2] == -9 and all(c not in (0, None) for c in codes), hosts.tail()
  survivors = [hosts.output(i) for i in (0, 1, 3)]
  for out in survivors:  # ssd_jax's word, JAX ending it (a host outside a collective), or gloo
    assert ('a collective failed because another host stopped' in out
            or 'Terminating process because the JAX distributed service' in out
            or GLOO_ABORT in out), hosts.tail()
  if GLOO_ABORT not in survivors[0]:  # else the coordination service went with host 0: no names
    assert any('host 2 stopped without a word' in out or 'stopped sending heartbeats):\n2' in out
               for out in survivors), hosts.tail()
  print(f'kill -9 of host 2 of 4: exit codes {codes}, every host stopped after {seconds:.1f} s')
  assert seconds < HEARTBEAT_S + 30
  again = Hosts(4, config_file, workdir, f'--config.train.num_steps={steps}',
                mode='train_and_eval')
  assert again.wait() == [0, 0, 0, 0], again.tail()
  assert 'resumed from step ' in again.output(0) + again.output(1)
  result = json.loads((workdir / f'eval_{steps}' / 'metrics.json').read_text())
  assert result['num_images'] == 16  # four shares, each image once
  assert saved_steps(workdir)[-1] == steps


def test_every_host_the_tests_start_writes_the_compilation_cache():
  """The tests' processes load ssd_jax/testing/every_host_caches (conftest.py); if
  JAX renames what it patches, this fails instead of hosts 1..N compiling again."""
  run = subprocess.run([sys.executable, '-c', 'from jax._src import compiler; '
                        'print(getattr(compiler._cache_write, "every_host", False))'],
                       capture_output=True, text=True, timeout=120)
  assert run.stdout.strip() == 'True', run.stderr[-2000:]


def test_an_unknown_cluster_is_a_clear_error(config_file, tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_COORDINATOR', 'SLURM',
                                                                   'OMPI', 'JAX_NUM', 'JAX_PROC'))}
  run = subprocess.run([sys.executable, '-m', 'ssd_jax.main', f'--config={config_file}',
                        f'--workdir={tmp_path / "run"}', '--config.train.distributed=True'],
                       cwd=ROOT, env=dict(env, JAX_PLATFORMS='cpu'), capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 1
  assert 'set cluster.coordinator_address' in run.stderr and 'JAX_PROCESS_ID' in run.stderr
  assert not (tmp_path / 'run').exists()
