"""The training loop: data, steps, summaries, checkpoints, resume, preemption.

`run(config, workdir)` trains to config.train.num_steps (`train` takes the
config's Task and also returns the last evaluation); the step itself is
train_step.py, the checkpoints checkpoints.py, evaluation evaluate.py.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Optional

import jax
import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from ssd_jax import checkpoints, cluster, evaluate, paths, progress
from ssd_jax import pretrained, sharding, train_step, workdirs
from ssd_jax.data import input_pipeline
from ssd_jax.task import Task


def check_workdir(workdir: str) -> None:
  """Creates the workdir (a local path or a URL such as gs://...); a clear error
  when this host cannot write it. The probe file is named for the host and
  process, so hosts sharing one workdir never touch each other's."""
  folder = paths.path(workdir)
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f'.write_test.{socket.gethostname()}.{os.getpid()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise PermissionError(f'--workdir={workdir} cannot be written ({e.strerror or e}); choose '
                          f'a folder you may write to.') from e


class Preempted(Exception):
  """Raised after SIGTERM once the state is saved: the run can be resumed."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f'SIGTERM: saved step {step} in {workdir}; run the same command to resume.')
    self.step = step


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
  """Scalars under train/; images_per_second counts completed steps (nan, not
  written, before two steps have completed)."""
  with writer.as_default(step=step):
    for name, value in metrics.items():
      tf.summary.scalar(f'train/{name}', float(value))
    if np.isfinite(images_per_second):
      tf.summary.scalar('train/images_per_second', images_per_second)
  writer.flush()


def train(task: Task, workdir: str, with_eval: bool = False,
          pictures: Optional[str] = None) -> tuple:
  """Trains a task to its train.num_steps, resuming from the workdir's latest checkpoint.

  with_eval: also evaluate every eval.every_steps (if > 0) and at the end
  (evaluate.evaluate_and_report: <workdir>/eval_<step>/ and summaries; the
  end's detections drawn into the folder `pictures`, when given).
  Returns (the final state, the last evaluation's result or None). On several
  hosts, an error ends the process at once (cluster.fail): the other hosts may
  be gone, or waiting in a collective.
  """
  with contextlib.ExitStack() as stack:
    try:
      return _run(task, workdir, stack, with_eval, pictures)
    except Preempted:
      raise  # every host stops at the same step: the normal way out
    except Exception as e:
      if cluster.is_multihost():  # before the stack waits on hosts that may be gone
        cluster.fail(e)
      raise


def _claim_workdir(workdir: str, stack: contextlib.ExitStack):
  """Host 0 creates the workdir, takes the run lock and leaves a marker there;
  returns the lock and the marker's name (None on other hosts)."""
  if jax.process_index() != 0:
    return None, None
  check_workdir(workdir)
  lock = stack.enter_context(workdirs.workdir_lock(workdir))
  marker = f'.hosts_see_{os.getpid()}_{int(time.time())}'
  if cluster.is_multihost():
    (paths.path(workdir) / marker).write_text('written by host 0')
  return lock, marker


def _check_shared_workdir(workdir: str, marker: str) -> None:
  """A host other than 0 can write the workdir and sees host 0's marker there."""
  check_workdir(workdir)
  if not (paths.path(workdir) / marker).exists():
    raise FileNotFoundError(
        f'--workdir={workdir} on this host is not the folder host 0 created: every host '
        f'must see one shared workdir (a shared filesystem or a bucket such as gs://...).')


def _start(task: Task, workdir: str, mesh, stack: contextlib.ExitStack, with_eval: bool):
  """(state, checkpoint manager, first step, training source, eval source, run
  lock) of a run: resumed from the newest readable checkpoint, or fresh (from
  model.init_checkpoint or model.init_from if set). The eval source (None
  without with_eval) serves every evaluation of the run.

  Nothing in the workdir changes until the run's checks pass: a second run,
  one whose model does not fit the checkpoints or whose training or eval data
  does not open is refused first; then the checkpoints folder opens (the caller writes
  config.json once its data stream opens). On several hosts
  each check runs on every host, and all stop if one fails (cluster.agreement),
  before any host enters a collective.
  """
  config = task.config
  with cluster.agreement('claiming the workdir'):
    lock, marker = _claim_workdir(workdir, stack)
  with cluster.agreement('preparing the data and weights'):
    # Host 0 fetches the weights to start from (a wrong name or URL fails before
    # minutes of dataset generation) and generates a built-in dataset missing
    # from the data dir, while the others wait (leaving an agreement is a
    # collective): no two hosts ever write one dataset or one cached file.
    if jax.process_index() == 0:
      if config.model.init_from:
        pretrained.converted(config.model.init_from)
      input_pipeline.prepare_data(config)
  marker = sharding.gather_objects(marker)[0]
  # What each host checks on its own before the run starts: it sees the shared
  # workdir, the checkpoints fit the config, and its training data opens.
  with cluster.agreement('checking the workdir and the data'):
    if jax.process_index() != 0:
      _check_shared_workdir(workdir, marker)
    resuming = workdirs.check_resumable(config, workdir)
    source = input_pipeline.train_source(config)
    eval_source = input_pipeline.eval_source(config) if with_eval else None
  # Resuming, the checkpoint is restored into the state's shapes: no initial state
  # is computed, then overwritten, and the state is held once while it loads (step
  # folders always give a step, or restore_newest_readable raises: an abstract
  # state never reaches training).
  state = (train_step.abstract_state(task, mesh) if resuming
           else train_step.create_state(task, mesh, jax.random.key(config.seed)))
  mngr = checkpoints.manager(workdir, config)
  stack.callback(mngr.close)  # waits for saves in flight, also when a run stops early
  start, state = checkpoints.restore_newest_readable(mngr, state, workdir)
  if cluster.is_multihost():
    cluster.barrier('every host saw the workdir')
    if jax.process_index() == 0:
      (paths.path(workdir) / marker).unlink()
  if start:
    logging.info('resumed from step %d in %s', start, workdir)
    return state, mngr, start, source, eval_source, lock
  if config.model.init_checkpoint or config.model.init_from:
    state = checkpoints.initialise_from(
        state, config.model.init_checkpoint or pretrained.converted(config.model.init_from), mesh)
  elif task.family.imagenet and config.model.width == 1.0:
    logging.warning('training the %s base from scratch: SSD starts from ImageNet weights, '
                    '--config.model.init_from=%s.', config.model.backbone, task.family.imagenet)
  return state, mngr, start, source, eval_source, lock


def _run(task: Task, workdir: str, stack: contextlib.ExitStack, with_eval: bool,
         pictures: Optional[str]) -> tuple:
  config = task.config
  if config.train.distributed:
    cluster.initialize(config)
  mesh = sharding.make_mesh()
  host_batch = sharding.check_mesh_batch(config.train.batch_size, mesh)  # checked once, here
  anchors = jax.device_put(task.default_boxes, sharding.replicated(mesh))
  state, mngr, start, source, eval_source, lock = _start(task, workdir, mesh, stack, with_eval)
  data = input_pipeline.host_train_batches(config, source, jax.process_index(), host_batch,
                                           start)
  if jax.process_index() == 0:  # the run starts: the workdir now describes it
    workdirs.save_config(config, workdir)
  step_fn = train_step.jit_train_step(task, mesh)
  preemption = stack.enter_context(cluster.Preemption(mngr))
  writer = tf.summary.create_file_writer(workdir) if jax.process_index() == 0 else None
  total = config.train.num_steps
  bar = tqdm.tqdm(total=total, initial=start, desc='train', unit='step',
                  disable=jax.process_index() != 0)
  stack.callback(bar.close)
  completions = progress.Completions(bar, start)  # the bar counts completed steps
  # The run pauses to evaluate after each multiple of eval.every_steps and at
  # the end (a run that had finished before is evaluated again).
  every, result = config.eval.every_steps if with_eval else 0, None
  stops = [*range((start // every + 1) * every, total, every), total] if every else [total]
  for stop in stops:
    for step in range(start, stop):
      done = step + 1
      preempted = preemption.reached(done)  # stop after this step; on several hosts: on each
      state, metrics = step_fn(state, sharding.global_batch(next(data), mesh), anchors)
      completions.dispatched(done, metrics['loss'])
      saving = done % config.train.checkpoint_every == 0 or done == total or preempted
      if saving or done % config.train.log_every == 0:
        completions.drain()
        metrics = jax.device_get(metrics)
        check_finite(metrics, done, mngr)
        rate = completions.steps_per_second() * config.train.batch_size
        bar.set_postfix(loss=f'{metrics["loss"]:.3f}', lr=f'{metrics["learning_rate"]:.2e}')
        if writer:
          write_summaries(writer, done, metrics, rate)
      if saving:
        if lock:
          lock.check()
        checkpoints.save(mngr, done, state, force=True)
      if preempted:
        mngr.wait_until_finished()
        raise Preempted(done, workdir)
    start = stop
    if with_eval:
      result = evaluate.evaluate_and_report(task, state, workdir, stop, writer, mesh,
                                            pictures if stop == total else None, eval_source)
  mngr.wait_until_finished()
  return state, result
