"""Benchmark: matching + MultiBox loss, batched vs per-image references.

  python experiments/bench_loss.py [--batch 32] [--max-boxes 50] [--config configs/voc300.py]

Prints the time of the batched, jitted matching + loss (forward and gradient)
and, measured in the same run on the same data, two references: the same
per-image code called image by image from Python (how per-image ports loop),
and the plain NumPy loops the tests compare against. Ratios > 1 mean faster.
"""
import argparse
import os
import pathlib
import time

import jax
import numpy as np

from ssd_jax import builders, config_lib, losses, matching
from ssd_jax.testing import numpy_reference

import common  # experiments/common.py, beside this script

ROOT = pathlib.Path(__file__).resolve().parent.parent


def make_data(rng, batch, max_boxes, num_anchors, num_classes):
  counts = rng.integers(1, max_boxes + 1, batch)
  centre, size = rng.uniform(0.1, 0.9, (batch, max_boxes, 2)), rng.uniform(0.02, 0.6, (batch, max_boxes, 2))
  boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).clip(0, 1).astype(np.float32)
  labels = rng.integers(1, num_classes, (batch, max_boxes)).astype(np.int32)
  labels[np.arange(max_boxes)[None] >= counts[:, None]] = 0
  loc_pred = rng.normal(0, 1, (batch, num_anchors, 4)).astype(np.float32)
  logits = rng.normal(0, 1, (batch, num_anchors, num_classes)).astype(np.float32)
  return boxes, labels, loc_pred, logits


def loss_fn(loc_pred, logits, boxes, labels, anchors):
  loc_t, cls_t = matching.match(boxes, labels, anchors)
  return losses.multibox_loss(loc_pred, logits, loc_t, cls_t)[0]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--max-boxes', type=int, default=50)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--config', default=str(ROOT / 'configs' / 'voc300.py'))
  args = parser.parse_args()
  config = config_lib.validate(config_lib.load(args.config))
  anchors = builders.build_default_boxes(config)
  data = make_data(np.random.default_rng(0), args.batch, args.max_boxes, len(anchors),
                   config.model.num_classes)
  boxes, labels, loc_pred, logits = (jax.device_put(x) for x in data)

  grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
  batched = common.seconds_per_call(lambda: grad(loc_pred, logits, boxes, labels, anchors),
                                    args.repeats)

  def per_image():
    return [grad(loc_pred[i:i + 1], logits[i:i + 1], boxes[i:i + 1], labels[i:i + 1], anchors)
            for i in range(args.batch)]
  looped = common.seconds_per_call(per_image, max(1, args.repeats // 5))

  def numpy_loops():
    targets = [numpy_reference.match_image(data[0][i], data[1][i], anchors)
               for i in range(args.batch)]
    loc_t = np.stack([t[0] for t in targets])
    cls_t = np.stack([t[1] for t in targets])
    return numpy_reference.multibox_loss(data[2], data[3], loc_t, cls_t)[0]
  start = time.perf_counter()
  numpy_loops()
  numpy_time = time.perf_counter() - start

  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; batch {args.batch}, '
        f'{len(anchors)} default boxes, up to {args.max_boxes} boxes per image')
  print(f'batched jit (matching + loss + gradient): {batched * 1e3:9.2f} ms')
  print(f'per-image jit loop (reference):           {looped * 1e3:9.2f} ms'
        f'   ratio {looped / batched:6.1f}x')
  print(f'plain NumPy loops (reference, no grad):   {numpy_time * 1e3:9.2f} ms'
        f'   ratio {numpy_time / batched:6.1f}x')


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main()
