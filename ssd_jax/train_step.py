"""The train step and its state, data-parallel over a device Mesh.

One `jax.jit` function of (state, batch): the state is replicated, the batch
sharded over the mesh's data axis (see sharding.py), and the compiler inserts
the gradient all-reduce. BatchNorm layers therefore normalise with statistics
of the global batch (the means inside jit are over the whole sharded batch
axis, across devices and hosts), as synchronised BatchNorm does. Matching runs
inside the step, on device. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from ssd_jax import builders, losses, matching, optim, sharding, xla_cpu
from ssd_jax.task import Task


class TrainState(train_state.TrainState):
  """Step, params and optimiser state (apply_fn and tx are static, not pytree
  leaves), plus the model's state beyond its parameters:

  batch_stats: BatchNorm running statistics, or None for models without BatchNorm.
  ema_params: the exponential moving average of params (optim.ema_decay), or None.
  builders.inference_variables picks what evaluation and export apply.
  """
  batch_stats: Any = None
  ema_params: Any = None


def create_state(task: Task, mesh: Mesh, rng: jax.Array) -> TrainState:
  """The initial state of a task (ssd_jax.task.Task), created directly replicated
  on the mesh, with the task's optimiser."""
  tx = task.optimizer  # made here, not while `init` is traced (it would keep tracers)

  def init(rng):
    variables = task.init_variables(rng)
    params = variables['params']
    state = TrainState.create(apply_fn=task.model.apply, params=params, tx=tx,
                              batch_stats=variables.get('batch_stats'),
                              ema_params=params if task.config.optim.ema_decay else None)
    # int32 as restored (create's Python 0 would be weakly typed): a fresh and a
    # resumed run then trace one train step, which JAX's compilation cache serves to both.
    return state.replace(step=jnp.zeros((), jnp.int32))

  # It runs once: on CPU, compiled with the cheap passes (xla_cpu.RUN_ONCE).
  return xla_cpu.Jitted(init, xla_cpu.run_once_options(),
                        out_shardings=sharding.replicated(mesh))(rng)


def abstract_state(task: Task, mesh: Mesh) -> TrainState:
  """What create_state returns, as jax.ShapeDtypeStruct leaves replicated on the
  mesh, traced but never computed: the target a checkpoint is restored into."""
  _ = task.optimizer  # built (and cached) now: made while traced, it would keep tracers
  shapes = jax.eval_shape(lambda: create_state(task, mesh, jax.random.key(0)))
  return sharding.placed(shapes, sharding.replicated(mesh))


def forward(state: TrainState, params, images) -> tuple:
  """The model in training mode: ((offsets, logits), new batch_stats or None)."""
  if state.batch_stats is None:
    return state.apply_fn({'params': params}, images, train=True), None
  outputs, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                    images, train=True, mutable=['batch_stats'])
  return outputs, updates['batch_stats']


def train_step(state: TrainState, batch: dict, anchors: jax.Array, task) -> tuple:
  """One SGD step on a global batch.

  Args:
    state: replicated TrainState.
    batch: the pipeline's decoded crops and what finishes them (pixels.py) or
      image u8/f32[B, S, S, 3] RGB pixels; boxes f32[B, M, 4] normalised xyxy,
      labels i32[B, M] (0 = padding); sharded over the batch axis.
    anchors: f32[A, 4] normalised cxcywh default boxes (task.default_boxes).
    task: the run's ssd_jax.task.Task (static).

  Returns:
    (new state, metrics dict of float32 scalars).
  """
  config = task.config
  images = builders.train_images(batch, config)

  def loss_fn(params):
    (loc, logits), batch_stats = forward(state, params, images)
    loc_t, cls_t = matching.match(batch['boxes'], batch['labels'], anchors,
                                  config.matching.iou_threshold, config.anchors.variances,
                                  config.matching.rule)
    loss, parts = losses.multibox_loss(loc, logits, loc_t, cls_t, config.loss.neg_pos_ratio,
                                       config.loss.loc_weight, config.loss.normalize)
    return loss, (parts, batch_stats)

  (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads).replace(batch_stats=batch_stats)
  if state.ema_params is not None:
    new_state = new_state.replace(ema_params=optim.ema_update(
        state.ema_params, new_state.params, config.optim.ema_decay, state.step))
  metrics = dict(parts, loss=loss, grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(new_state.params),
                 learning_rate=task.schedule(state.step))
  return new_state, metrics


def jit_train_step(task, mesh: Mesh):
  """train_step of a task compiled for the mesh; the input state is donated."""
  replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return xla_cpu.jit(functools.partial(train_step, task=task), task.config,
                     in_shardings=(replicated, sharded, replicated),
                     out_shardings=(replicated, replicated), donate_argnums=0)
