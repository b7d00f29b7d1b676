"""From a config to the model and its default boxes, kept consistent.

The number of boxes per location comes from the aspect ratios (anchors.py) and
the size of each source map from the network itself (`jax.eval_shape`, no
compute), so the head outputs and the default boxes always line up. Configs
reach here validated (config_lib.validate, called once by each entry point).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from ssd_jax import anchors, config_lib, models


def _boxes_per_location(config) -> tuple[int, ...]:
  a = config.anchors
  with_max = a.min_sizes is None or a.max_sizes is not None
  return tuple(anchors.boxes_per_location(r, with_max) for r in a.aspect_ratios)


def _backbone_kwargs(config) -> tuple:
  """The Backbone's fields, as a hashable tuple of (name, value) pairs."""
  m = config.model
  return (('sources', tuple(m.sources)), ('extras', m.extras), ('width', m.width),
          ('atrous', m.atrous), ('fc_features', m.fc_features),
          ('l2norm_scale', m.l2norm_scale), ('dtype', config_lib.dtype(m.dtype)),
          ('param_dtype', config_lib.dtype(m.param_dtype)))


def build_model(config: config_dict.ConfigDict) -> models.SSD:
  """The SSD module the config describes."""
  return models.SSD(backbone=models.Backbone(**dict(_backbone_kwargs(config))),
                    num_classes=config.model.num_classes,
                    boxes_per_location=_boxes_per_location(config))


def normalise_images(pixels, config) -> jax.Array:
  """u8/f32 [..., S, S, 3] RGB pixels -> f32 network input: minus data.mean_rgb.

  Every jitted step (training, evaluation, Detector, export) starts here, so
  pipelines ship pixels (uint8 for training: a quarter of float32's bytes).
  """
  return jnp.asarray(pixels, jnp.float32) - jnp.asarray(config.data.mean_rgb, jnp.float32)


def init_params(config: config_dict.ConfigDict, rng: jax.Array) -> dict:
  """Freshly initialised parameters of the config's model (under `jax.eval_shape`,
  their shapes and dtypes only, with no compute)."""
  size = config.model.image_size
  return build_model(config).init(rng, jnp.zeros((1, size, size, 3), jnp.float32))['params']


@functools.lru_cache(maxsize=32)
def _feature_sizes(image_size: int, kwargs: tuple) -> tuple[int, ...]:
  backbone = models.Backbone(**dict(kwargs))
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  outputs, _ = jax.eval_shape(backbone.init_with_output, jax.random.key(0), images)
  for name, out in zip(backbone.sources, outputs):
    if out.shape[1] != out.shape[2]:
      raise ValueError(f'source {name} is not square: {out.shape}.')
  return tuple(int(out.shape[1]) for out in outputs)


def source_feature_sizes(config: config_dict.ConfigDict) -> tuple[int, ...]:
  """Side of each source feature map for the config's input size."""
  return _feature_sizes(config.model.image_size, _backbone_kwargs(config))


def build_default_boxes(config: config_dict.ConfigDict) -> np.ndarray:
  """f32[A, 4] normalised cxcywh default boxes, in the order of the head outputs."""
  a, size = config.anchors, config.model.image_size
  feature_sizes = source_feature_sizes(config)
  min_sizes, max_sizes = a.min_sizes, a.max_sizes
  if min_sizes is None:
    min_sizes, max_sizes = anchors.sizes_from_scales(
        size, len(feature_sizes), a.s_min, a.s_max, a.first_scale)
  return anchors.default_boxes(size, feature_sizes, min_sizes, max_sizes, a.aspect_ratios,
                               a.steps, a.clip)
