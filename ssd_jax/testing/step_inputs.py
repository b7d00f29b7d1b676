"""Training batches as the train step sees them, for tests: the finished images
of a batch, and a batch's shapes for lowering the step ahead of time."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import pixels


def finished_images(batch: dict, config) -> np.ndarray:
  """u8 [b, S, S, 3]: the images the train step makes of a training batch
  (pixels.finish, here on the default device), to look at what training sees."""
  images = pixels.finish_compiled(batch, config.model.image_size, config.data.mean_rgb)
  return np.asarray(images).astype(np.uint8)


def batch_spec(config, batch_size: int) -> dict:
  """The training batch the input pipeline yields (data/input_pipeline.py), as
  jax.ShapeDtypeStruct: the decoded crops and what finishes them (pixels.py),
  boxes and labels. For lowering and compiling ahead of time."""
  b, p, m = batch_size, config.data.pixel_buffer, config.data.max_boxes
  shapes = {'pixels': ((b, p, p, 3), jnp.uint8), 'pixels_size': ((b, 2), jnp.int32),
            'place': ((b, 4), jnp.int32), 'method': ((b,), jnp.int32),
            'colour': ((b, len(pixels.COLOUR_FIELDS)), jnp.float32), 'flip': ((b,), jnp.bool_),
            'boxes': ((b, m, 4), jnp.float32), 'labels': ((b, m), jnp.int32)}
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}
