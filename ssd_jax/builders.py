"""From a config to the model and its default boxes, kept consistent.

The number of boxes per location comes from the aspect ratios (anchors.py) and
the size of each source map from the network itself (`jax.eval_shape`, no
compute), so the head outputs and the default boxes always line up. Configs
reach here validated; ssd_jax.task.Task calls these once per entry point and
holds what they return.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from ssd_jax import anchors, config_lib, models, pixels
from ssd_jax.models import ssd


def boxes_per_location(config) -> tuple[int, ...]:
  a = config.anchors
  with_max = a.min_sizes is None or a.max_sizes is not None
  return tuple(anchors.boxes_per_location(r, with_max) for r in a.aspect_ratios)


def _build_backbone(config) -> nn.Module:
  m = config.model
  return models.backbone(m.backbone).build(m, config.backbone, config_lib.dtype(m.dtype),
                                          config_lib.dtype(m.param_dtype))


def build_model(config: config_dict.ConfigDict) -> ssd.SSD:
  """The SSD module the config describes: its backbone and head (ssd_jax.models)."""
  m = config.model
  head = models.head(m.head).build(m, boxes_per_location(config), config_lib.dtype(m.dtype),
                                  config_lib.dtype(m.param_dtype))
  return ssd.SSD(backbone=_build_backbone(config), head=head)


def train_images(batch: dict, config) -> jax.Array:
  """f32 [B, S, S, 3] network input of a training batch: its decoded crops
  finished on the device (pixels.finish: resample, colour, mirror), or a
  batch's ready `image` (synthetic batches, benchmarks), normalised."""
  if 'image' in batch:
    return normalise_images(batch['image'], config)
  return normalise_images(
      pixels.finish(batch, config.model.image_size, config.data.mean_rgb), config)


def normalise_images(pixels, config) -> jax.Array:
  """u8/f32 [..., S, S, 3] RGB pixels -> f32 network input: (pixels - data.mean_rgb)
  / data.std_rgb (std 1 in the VGG recipes: the mean subtracted only).

  Every jitted step (training, evaluation, Detector, export) starts here, so
  pipelines ship pixels (uint8 for training: a quarter of float32's bytes).
  """
  d = config.data
  x = jnp.asarray(pixels, jnp.float32) - jnp.asarray(d.mean_rgb, jnp.float32)
  if tuple(d.std_rgb) == (1.0, 1.0, 1.0):
    return x
  return x / jnp.asarray(d.std_rgb, jnp.float32)


def model_variables(model: nn.Module, image_size: int, rng: jax.Array) -> dict:
  """Freshly initialised variables of `model` for image_size² inputs: {'params': ...},
  plus {'batch_stats': ...} where a part has BatchNorm layers (under
  `jax.eval_shape`, their shapes and dtypes only, with no compute)."""
  return dict(model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32)))


def init_variables(config: config_dict.ConfigDict, rng: jax.Array) -> dict:
  """model_variables of the config's model."""
  return model_variables(build_model(config), config.model.image_size, rng)


# Roles (ssd.ROLES) of the parameters of Flax's own layers; modules of ours
# declare theirs in a PARAM_ROLES class attribute (vgg16.L2Norm).
FLAX_ROLES = {
    nn.Conv: {'kernel': 'weight', 'bias': 'bias'},
    nn.ConvTranspose: {'kernel': 'weight', 'bias': 'bias'},
    nn.Dense: {'kernel': 'weight', 'bias': 'bias'},
    nn.BatchNorm: {'scale': 'norm', 'bias': 'norm'},
    nn.LayerNorm: {'scale': 'norm', 'bias': 'norm'},
    nn.GroupNorm: {'scale': 'norm', 'bias': 'norm'},
}


def _roles_of(module: nn.Module) -> dict:
  for kind, roles in FLAX_ROLES.items():
    if isinstance(module, kind):
      return roles
  return getattr(module, 'PARAM_ROLES', {})


class ModelShapes(NamedTuple):
  """What one trace of a model's initialisation tells (trace_model).

  variables: jax.ShapeDtypeStruct of each variable ({'params'}, and
    'batch_stats' where the model has BatchNorm).
  roles: a tree like the parameters holding each one's role (ssd.ROLES).
  feature_sizes: the side of each source map, in model.sources order.
  """
  variables: dict
  roles: dict
  feature_sizes: tuple[int, ...]


def trace_model(config: config_dict.ConfigDict, model: Optional[nn.Module] = None) -> ModelShapes:
  """The config's model initialised under jax.eval_shape (no compute), once:
  its variables' shapes, each parameter's role (from the module that owns it,
  never from its name alone) and its backbone's source map sizes.

  model: the config's model (an ssd.SSD), if already built.
  Raises ValueError naming a parameter whose module declares no role for it,
  or a source map that is not square.
  """
  owners, maps = {}, []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      owners[context.module.path] = _roles_of(context.module)
      if context.module.path == ('backbone',):
        maps.append(out)
    return out

  size = config.model.image_size
  with nn.intercept_methods(record):
    variables = dict(jax.eval_shape((model or build_model(config)).init, jax.random.key(0),
                                    jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)))
  roles = {}
  for path in flax.traverse_util.flatten_dict(variables['params']):
    role = owners.get(path[:-1], {}).get(path[-1])
    if role is None:
      raise ValueError(f'parameter {"/".join(path)} has no role (weight, bias or norm); give '
                       f'its module a PARAM_ROLES attribute.')
    roles[path] = role
  return ModelShapes(variables, flax.traverse_util.unflatten_dict(roles),
                     _square_sides(config.model.sources, maps[0]))


def inference_variables(tree) -> dict:
  """The variables inference applies: {'params': ...} plus 'batch_stats' where the
  model has BatchNorm; the parameters' moving average (optim.ema_decay) in place
  of the parameters when there is one.

  `tree` is a train state, a restored checkpoint ({'params', 'batch_stats',
  'ema_params', ...}), inference variables, or bare parameters. Evaluation,
  prediction, Detector, export and the converters' checks all start here.
  """
  if isinstance(tree, Mapping):
    get = tree.get if 'params' in tree else {'params': tree}.get
  else:
    get = lambda name: getattr(tree, name, None)  # noqa: E731 - a train state
  params = get('ema_params') if get('ema_params') is not None else get('params')
  variables = {'params': params}
  if get('batch_stats') is not None:
    variables['batch_stats'] = get('batch_stats')
  return variables


def source_feature_sizes(config: config_dict.ConfigDict) -> tuple[int, ...]:
  """Side of each source feature map for the config's input size (the backbone
  traced with jax.eval_shape, no compute)."""
  backbone, size = _build_backbone(config), config.model.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  outputs, _ = jax.eval_shape(backbone.init_with_output, jax.random.key(0), images)
  return _square_sides(config.model.sources, outputs)


def _square_sides(sources: Sequence[str], maps) -> tuple[int, ...]:
  """The side of each f[B, h, w, c] source map; ValueError where h != w."""
  for name, out in zip(sources, maps):
    if out.shape[1] != out.shape[2]:
      raise ValueError(f'source {name} is not square: {out.shape}.')
  return tuple(int(out.shape[1]) for out in maps)


def build_default_boxes(config: config_dict.ConfigDict,
                        feature_sizes: Optional[Sequence[int]] = None) -> np.ndarray:
  """f32[A, 4] normalised cxcywh default boxes, in the order of the head outputs
  (feature_sizes: source_feature_sizes(config), if already known)."""
  a, size = config.anchors, config.model.image_size
  feature_sizes = feature_sizes or source_feature_sizes(config)
  min_sizes, max_sizes = a.min_sizes, a.max_sizes
  if min_sizes is None:
    min_sizes, max_sizes = anchors.sizes_from_scales(
        size, len(feature_sizes), a.s_min, a.s_max, a.first_scale)
  return anchors.default_boxes(size, feature_sizes, min_sizes, max_sizes, a.aspect_ratios,
                               a.steps, a.clip)
