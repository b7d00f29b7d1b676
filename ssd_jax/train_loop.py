"""The training loop: data, steps, summaries, checkpoints, resume, preemption.

`run(config, workdir)` trains to config.train.num_steps; the step itself is
train_step.py, the checkpoints checkpoints.py, evaluation evaluate.py.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import jax
import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from ssd_jax import builders, checkpoints, config_lib, evaluate, sharding, train_step
from ssd_jax.data import input_pipeline


def check_workdir(workdir: str) -> None:
  """Creates the workdir; a clear error when it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'--workdir={workdir} cannot be written ({e.strerror}); choose a '
                          f'folder you may write to.') from e


class Preempted(Exception):
  """Raised after SIGTERM once the state is saved: the run can be resumed."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f'SIGTERM: saved step {step} in {workdir}; run the same command to resume.')
    self.step = step


class Preemption:
  """Set by SIGTERM (a preempted TPU/GPU VM) while in use: the loop saves and exits.

  A context manager: the previous SIGTERM handler comes back on exit.
  """

  def __init__(self):
    self.event = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def __bool__(self):
    return self.event.is_set()


def check_finite(metrics: dict, step: int, mngr) -> None:
  """Stops before a non-finite state can reach a checkpoint."""
  bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    last = mngr.latest_step()
    kept = (f'the last checkpoint, step {last}, is kept and nothing after it was saved'
            if last is not None else 'no checkpoint had been saved yet, and none was')
    raise FloatingPointError(
        f'non-finite training metrics at step {step}: {bad}; {kept}. Lower '
        f'optim.learning_rate, set optim.grad_clip_norm, or check the input boxes.')


def write_summaries(writer, step: int, metrics: dict, images_per_second: float) -> None:
  with writer.as_default(step=step):
    for name, value in metrics.items():
      tf.summary.scalar(f'train/{name}', float(value))
    tf.summary.scalar('train/images_per_second', images_per_second)
  writer.flush()


def run(config, workdir: str, with_eval: bool = False) -> train_step.TrainState:
  """Trains to config.train.num_steps, resuming from the workdir's latest checkpoint.

  with_eval: also evaluate every config.eval.every_steps (if > 0) and at the
  end (evaluate.evaluate_and_report: <workdir>/eval_<step>/ and summaries).
  Returns the final state.
  """
  with contextlib.ExitStack() as stack:
    return _run(config, workdir, stack, with_eval)


def initialise_from(state, path: str, mesh):
  """The fresh state with the parameters `path` provides (see
  checkpoints.load_matching_params); optimiser state and step stay fresh."""
  params, report = checkpoints.load_matching_params(path, state.params)
  logging.info('initialised %d parameters from %s; %d keep their initial values: %s',
               len(report['restored']), path, len(report['kept']), report['kept'])
  params = jax.device_put(params, sharding.replicated(mesh))
  return state.replace(params=params)


def _start(config, workdir: str, mesh, stack: contextlib.ExitStack):
  """(state, checkpoint manager or None, first step) of a run: resumed from the
  newest readable checkpoint, or fresh (from model.init_checkpoint if set).

  Nothing in the workdir changes until the run is known to start: a second
  run, or one whose model does not fit the checkpoints, is refused first (the
  caller writes config.json once its data stream opens).
  """
  check_workdir(workdir)
  if jax.process_index() == 0:
    stack.enter_context(checkpoints.workdir_lock(workdir))
  checkpoints.check_resumable(config, workdir)
  state = train_step.create_state(config, mesh, jax.random.key(config.seed))
  mngr, start = None, 0
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):  # else opened once data flows
    mngr = checkpoints.manager(workdir, config)
    stack.callback(mngr.close)  # waits for saves in flight, also when a run stops early
    start, state = checkpoints.restore_newest_readable(mngr, state, workdir)
  if start:
    logging.info('resumed from step %d in %s', start, workdir)
  elif config.model.init_checkpoint:
    state = initialise_from(state, config.model.init_checkpoint, mesh)
  elif config.model.width == 1.0:
    logging.warning('training the VGG16 base from scratch: the paper starts from ImageNet '
                    'weights. Convert them with python -m ssd_jax.convert --format=vgg16 and '
                    'pass --config.model.init_checkpoint=<its output>.')
  return state, mngr, start


def _run(config, workdir: str, stack: contextlib.ExitStack,
         with_eval: bool) -> train_step.TrainState:
  config_lib.validate(config)
  if config.train.distributed:
    jax.distributed.initialize()
  mesh = sharding.make_mesh()
  sharding.check_mesh_batch(config.train.batch_size, mesh)
  anchors = jax.device_put(builders.build_default_boxes(config), sharding.replicated(mesh))
  state, mngr, start = _start(config, workdir, mesh, stack)
  data = input_pipeline.train_batches(config, start_step=start)
  if mngr is None:
    mngr = checkpoints.manager(workdir, config)
    stack.callback(mngr.close)
  if jax.process_index() == 0:  # the run starts: the workdir now describes it
    checkpoints.save_config(config, workdir)
  step_fn = train_step.jit_train_step(config, mesh)
  preempted = stack.enter_context(Preemption())
  writer = tf.summary.create_file_writer(workdir) if jax.process_index() == 0 else None
  total = config.train.num_steps
  last_time, last_step = time.perf_counter(), start
  bar = tqdm.trange(start, total, initial=start, total=total, desc='train', unit='step',
                    disable=jax.process_index() != 0)
  for step in bar:
    state, metrics = step_fn(state, sharding.global_batch(next(data), mesh), anchors)
    done = step + 1
    saving = done % config.train.checkpoint_every == 0 or done == total or preempted
    if saving or done % config.train.log_every == 0:
      metrics = jax.device_get(metrics)
      check_finite(metrics, done, mngr)
      rate = (done - last_step) * config.train.batch_size / (time.perf_counter() - last_time)
      last_time, last_step = time.perf_counter(), done
      bar.set_postfix(loss=f'{metrics["loss"]:.3f}', lr=f'{metrics["learning_rate"]:.2e}')
      if writer:
        write_summaries(writer, done, metrics, rate)
    if saving:
      checkpoints.save(mngr, done, state, force=True)
    if preempted:
      mngr.wait_until_finished()
      raise Preempted(done, workdir)
    every = config.eval.every_steps
    if with_eval and (done == total or (every and done % every == 0)):
      evaluate.evaluate_and_report(config, state.params, workdir, done, writer, mesh)
  mngr.wait_until_finished()
  if with_eval and start == total:  # an already finished run: evaluate it again
    evaluate.evaluate_and_report(config, state.params, workdir, total, writer, mesh)
  return state
