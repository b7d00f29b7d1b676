"""Benchmark: input pipeline throughput on VOC-sized JPEGs with full augmentation.

  python experiments/bench_input.py [--images 64] [--batches 30] [--batch 32]

Writes a Pascal VOC folder of random 500x375 JPEGs with 1-6 boxes each to a
temporary directory, then measures, in the same run and on the same files:
  1. the training pipeline with the paper's full augmentation,
  2. the same pipeline with augmentation off (decode + resize only),
  3. a plain single-threaded Python loop (PIL decode + resize), the reference.
Prints images/second for each and the ratios to the reference.
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from PIL import Image

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
from ssd_jax import config_lib, labels  # noqa: E402
from ssd_jax.data import input_pipeline  # noqa: E402
from ssd_jax.testing import synthetic  # noqa: E402  (the tests' VOC folder writer)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def write_random_voc_folder(root: pathlib.Path, n: int, rng) -> None:
  """n random-noise 500x375 JPEGs (hard to compress, like photos) with 1-6 boxes."""
  images = []
  for i in range(n):
    pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    objects = []
    for _ in range(rng.integers(1, 7)):
      x0, y0 = int(rng.integers(1, 400)), int(rng.integers(1, 300))
      objects.append((labels.VOC_NAMES[rng.integers(0, 20)], False, x0, y0,
                      x0 + int(rng.integers(20, 100)), y0 + int(rng.integers(20, 75))))
    images.append((f'{i:06d}', Image.fromarray(pixels), objects))
  synthetic.write_voc_folder(root, images)


def pipeline_rate(config, batches: int) -> float:
  it = iter(input_pipeline.train_dataset(config, 0, 1))
  next(it)  # warm up: build, fill the shuffle buffer
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * config.train.batch_size / (time.perf_counter() - start)


def python_loop_rate(root: pathlib.Path, n: int, size: int) -> float:
  files = sorted((root / 'JPEGImages').glob('*.jpg'))[:n]
  start = time.perf_counter()
  for f in files:
    with Image.open(f) as im:
      np.asarray(im.convert('RGB').resize((size, size), Image.BILINEAR), np.float32)
  return len(files) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--images', type=int, default=64)
  parser.add_argument('--batches', type=int, default=30)
  parser.add_argument('--batch', type=int, default=32)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    write_random_voc_folder(root, args.images, np.random.default_rng(0))
    config = config_lib.load(str(ROOT / 'configs' / 'voc300.py'))
    config.data.format, config.data.root = 'voc_folder', str(root)
    config.data.train_splits = ('trainval',)
    config.data.shuffle_buffer = args.images
    config.train.batch_size = args.batch
    full = pipeline_rate(config, args.batches)
    config.augment.enabled = False
    plain = pipeline_rate(config, args.batches)
    reference = python_loop_rate(root, args.images, config.model.image_size)
  print(f'{os.cpu_count()} CPU cores; 500x375 JPEGs -> 300x300, batch {args.batch}')
  print(f'reference: Python loop, PIL decode + resize:    {reference:8.1f} images/s')
  print(f'tf.data, decode + resize only:                  {plain:8.1f} images/s'
        f'   ratio {plain / reference:5.2f}x')
  print(f'tf.data, full SSD augmentation:                 {full:8.1f} images/s'
        f'   ratio {full / reference:5.2f}x')


if __name__ == '__main__':
  sys.exit(main())
