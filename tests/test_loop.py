"""The training loop: exact resume, non-finite stop, clear errors."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from ssd_jax import checkpoints, sharding, train_loop, train_step
from ssd_jax.testing import runs, synthetic
from ssd_jax.task import Task

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def squares_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('squares')
  synthetic.squares_voc_folder(root, 16)
  return str(root)


def squares_config(load_config, root, num_steps):
  return synthetic.squares_config(load_config('voc300'), root, num_steps)


def test_resumed_run_reaches_the_uninterrupted_parameters(load_config, squares_root, tmp_path):
  straight = runs.train(squares_config(load_config, squares_root, 4), str(tmp_path / 'a'))
  runs.train(squares_config(load_config, squares_root, 2), str(tmp_path / 'b'))  # "killed" at 2
  resumed = runs.train(squares_config(load_config, squares_root, 4), str(tmp_path / 'b'))
  assert int(resumed.step) == int(straight.step) == 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(resumed.params), jax.device_get(straight.params))
  assert list((tmp_path / 'b').glob('events.out.tfevents*'))  # TensorBoard summaries


def test_non_finite_loss_stops_before_a_checkpoint(load_config, squares_root, tmp_path):
  c = squares_config(load_config, squares_root, 6)
  c.optim.learning_rate, c.optim.grad_clip_norm = 1e12, None
  with pytest.raises(FloatingPointError, match='non-finite training metrics at step') as stop:
    runs.train(c, str(tmp_path))
  assert 'None' not in str(stop.value)
  assert 'no checkpoint had been saved yet' in str(stop.value) or 'is kept' in str(stop.value)
  mngr = checkpoints.manager(str(tmp_path), c)
  for step in mngr.all_steps():
    template = train_step.create_state(Task.of(c), sharding.make_mesh(), jax.random.key(0))
    saved = checkpoints.restore(mngr, template, step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(saved.params)))


def test_unwritable_workdir_is_a_clear_error(load_config, squares_root, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(PermissionError, match='cannot be written'):
    runs.train(squares_config(load_config, squares_root, 1), str(blocker / 'run'))


def test_missing_checkpoint_is_a_clear_error(load_config, tmp_path):
  c = load_config('voc300')
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    checkpoints.restore(checkpoints.manager(str(tmp_path), c), {'x': np.zeros(1)})


def test_unknown_config_field_on_the_command_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'ssd_jax.main', f'--config={ROOT}/configs/voc300.py',
       f'--workdir={tmp_path}', '--config.train.batch_sise=8'],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 2
  assert 'Did you mean "batch_size"' in result.stderr and 'Traceback' not in result.stderr


def test_main_loads_the_torchvision_config_and_names_the_missing_checkpoint(tmp_path):
  """configs/coco300_torchvision.py, loaded by main.py, whose --input/--output
  must not clash with the converter's flags of the same names."""
  result = subprocess.run(
      [sys.executable, '-m', 'ssd_jax.main', f'--config={ROOT}/configs/coco300_torchvision.py',
       '--mode=predict', f'--workdir={tmp_path / "none"}', f'--input={tmp_path}'],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode != 0
  assert 'none does not exist; pass a workdir of a training run' in result.stderr


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.xdist_group('hosts')  # see pytest.ini
def test_two_processes_give_the_one_process_step(tmp_path):
  """jax.distributed on loopback (gloo CPU collectives): 2 processes x 2 devices
  take the same step as 1 process x 4 devices."""
  worker = str(ROOT / 'tests' / 'distributed_worker.py')
  port = str(free_port())
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  runs = [[sys.executable, worker, str(tmp_path / 'one.npz'), port, '0', '1'],
          [sys.executable, worker, str(tmp_path / 'two.npz'), port, '0', '2'],
          [sys.executable, worker, str(tmp_path / 'unused.npz'), port, '1', '2']]
  # The pair first, then the one process: three at once on two loaded cores made
  # a host of the pair miss gloo's 30 s start-up deadline.
  procs, outputs = [], []
  for group in (runs[1:], runs[:1]):
    started = [subprocess.Popen(r, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for r in group]
    outputs += [p.communicate(timeout=600)[0] for p in started]
    procs += started
  procs, outputs = procs[-1:] + procs[:-1], outputs[-1:] + outputs[:-1]  # in the order of runs
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  one, two = np.load(tmp_path / 'one.npz'), np.load(tmp_path / 'two.npz')
  assert sorted(one.files) == sorted(two.files)
  for k in one.files:
    np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_sigterm_saves_and_stops(load_config, squares_root, tmp_path):
  config = squares_config(load_config, squares_root, 10_000)
  config.train.checkpoint_every = 1_000
  config.train.log_every = 1
  events = tmp_path / 'run'

  def preempt_once_training_runs():  # after the first summary is written
    deadline = time.time() + 300
    while time.time() < deadline and not list(events.glob('events.out.tfevents*')):
      time.sleep(0.2)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)

  previous = signal.getsignal(signal.SIGTERM)
  threading.Thread(target=preempt_once_training_runs, daemon=True).start()
  with pytest.raises(train_loop.Preempted, match='run the same command to resume') as stop:
    runs.train(config, str(events))
  assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
  assert 1 <= stop.value.step < 10_000
  assert checkpoints.manager(str(events), config).latest_step() == stop.value.step
