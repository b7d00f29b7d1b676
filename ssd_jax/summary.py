"""Describe the detector a config builds: sources, default boxes, parameters.

  python -m ssd_jax.summary --config=configs/voc300.py
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ssd_jax import builders
from ssd_jax.task import Task

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)


def describe(task) -> str:
  """A table of the source layers of a task (ssd_jax.task.Task), their default
  boxes, and the totals."""
  config, size = task.config, task.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  (loc, logits), variables = jax.eval_shape(task.model.init_with_output, jax.random.key(0),
                                            images)
  boxes, fmaps = task.default_boxes, task.feature_sizes
  width = max(10, *(len(name) for name in config.model.sources))
  lines = [f'{"source":<{width}} {"map":>7} {"boxes/cell":>10} {"boxes":>7}']
  for name, f, k in zip(config.model.sources, fmaps, builders.boxes_per_location(config)):
    lines.append(f'{name:<{width}} {f:>3}x{f:<3} {k:>10} {f * f * k:>7}')
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  lines += [f'default boxes: {len(boxes)}; outputs {loc.shape} offsets, {logits.shape} logits',
            f'parameters: {n_params:,} ({config.model.num_classes} classes, '
            f'input {size}x{size}, compute {config.model.dtype}; backbone '
            f'{config.model.backbone}, head {config.model.head})']
  return '\n'.join(lines)


def main(argv):
  del argv
  print(describe(Task.of(_CONFIG.value)))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
