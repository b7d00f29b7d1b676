"""The train step and its state, data-parallel over a device Mesh.

One `jax.jit` function of (state, batch): the state is replicated, the batch
sharded over the mesh's data axis (see sharding.py), and the compiler inserts
the gradient all-reduce. Matching runs inside the step, on device. Nothing here
imports TensorFlow.
"""
from __future__ import annotations

import functools

import jax
import optax
from flax.training import train_state
from jax.sharding import Mesh

from ssd_jax import builders, losses, matching, optim, sharding

# Step, params and optimiser state; apply_fn and tx are static (not pytree leaves).
TrainState = train_state.TrainState


def create_state(config, mesh: Mesh, rng: jax.Array) -> TrainState:
  """Initial state, created directly replicated on the mesh."""
  model = builders.build_model(config)
  tx = optim.create_optimizer(config.optim)

  def init(rng):
    return TrainState.create(apply_fn=model.apply, params=builders.init_params(config, rng),
                             tx=tx)

  return jax.jit(init, out_shardings=sharding.replicated(mesh))(rng)


def train_step(state: TrainState, batch: dict, anchors: jax.Array, config) -> tuple:
  """One SGD step on a global batch.

  Args:
    state: replicated TrainState.
    batch: image u8/f32[B, S, S, 3] RGB pixels, boxes f32[B, M, 4] normalised xyxy,
      labels i32[B, M] (0 = padding); sharded over the batch axis.
    anchors: f32[A, 4] normalised cxcywh default boxes.
    config: the run's config (static).

  Returns:
    (new state, metrics dict of float32 scalars).
  """
  def loss_fn(params):
    loc, logits = state.apply_fn({'params': params},
                                 builders.normalise_images(batch['image'], config))
    loc_t, cls_t = matching.match(batch['boxes'], batch['labels'], anchors,
                                  config.matching.iou_threshold, config.anchors.variances)
    return losses.multibox_loss(loc, logits, loc_t, cls_t, config.loss.neg_pos_ratio,
                                config.loss.loc_weight)

  (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  metrics = dict(parts, loss=loss, grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(new_state.params),
                 learning_rate=optim.learning_rate_schedule(config.optim)(state.step))
  return new_state, metrics


def jit_train_step(config, mesh: Mesh):
  """train_step compiled for the mesh; the input state is donated."""
  replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(functools.partial(train_step, config=config),
                 in_shardings=(replicated, sharded, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)
