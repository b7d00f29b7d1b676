"""Experiment: float32 and bfloat16 training loss curves on the shapes dataset.

  python experiments/precision_curves.py [--steps 300] [--every 25]

Trains configs/shapes.py (the quickstart: its input pipeline with the release's
augmentation, Adam) from the same initialisation on the same batches, once with
model.dtype float32 and once bfloat16, and prints the mean loss of every
`--every` steps side by side with their ratio, then the largest deviation.
Needs TensorFlow (the input pipeline) and generates ssd_shapes on first use.
"""
import argparse
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import config_lib, sharding, train_step
from ssd_jax.data import input_pipeline
from ssd_jax.task import Task

ROOT = pathlib.Path(__file__).resolve().parent.parent


def loss_curve(dtype: str, steps: int) -> tuple[np.ndarray, float]:
  """(losses [steps], seconds per step) of the quickstart config in `dtype`."""
  config = config_lib.load(str(ROOT / 'configs' / 'shapes.py'))
  config.model.dtype = dtype
  config = config_lib.validate(config)
  mesh = sharding.make_mesh()
  task = Task.of(config)
  state = train_step.create_state(task, mesh, jax.random.key(config.seed))
  step = train_step.jit_train_step(task, mesh)
  anchors = jnp.asarray(task.default_boxes)
  batches = input_pipeline.train_batches(config)
  losses, start = [], None
  for i in range(steps):
    state, metrics = step(state, sharding.global_batch(next(batches), mesh), anchors)
    losses.append(float(metrics['loss']))
    if i == 0:
      start = time.perf_counter()  # after compilation
  return np.asarray(losses), (time.perf_counter() - start) / max(1, steps - 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--every', type=int, default=25)
  args = parser.parse_args()
  f32, f32_s = loss_curve('float32', args.steps)
  bf16, bf16_s = loss_curve('bfloat16', args.steps)
  n = args.steps // args.every
  mean = lambda x: x[:n * args.every].reshape(n, args.every).mean(1)  # noqa: E731
  print(f'device: {jax.devices()[0].device_kind}; jax {jax.__version__}; '
        f's/step float32 {f32_s:.3f}, bfloat16 {bf16_s:.3f}')
  print('| steps | float32 loss | bfloat16 loss | bfloat16 / float32 |')
  print('|---|---:|---:|---:|')
  for i, (a, b) in enumerate(zip(mean(f32), mean(bf16))):
    print(f'| {i * args.every}-{(i + 1) * args.every - 1} | {a:.3f} | {b:.3f} | {b / a:.3f} |')
  print(f'largest deviation of the {args.every}-step means: '
        f'{np.max(np.abs(mean(bf16) / mean(f32) - 1)):.1%}')


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main()
