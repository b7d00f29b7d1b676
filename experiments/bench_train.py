"""Benchmark: the jitted train step in images/second, against torchvision's SSD300.

  python experiments/bench_train.py [--configs voc300 voc512] [--batches 8]
      [--dtypes float32 bfloat16] [--width 1.0] [--xla_gradients] [--xla_defaults]
      [--end_to_end]

Measured in one run, on the same device (GPU when JAX and torch see one, else CPU):
  ssd_jax      train_step.jit_train_step: forward, matching, MultiBox loss with hard
               negative mining, backward, the SGD update; random boxes on random images.
  xla_grads    (--xla_gradients) the same step with XLA's own pooling gradient
               instead of ssd_jax.layers' CPU one (see that module).
  xla_defaults (--xla_defaults, CPU) the same step compiled with XLA's default
               options instead of xla_cpu.OPTIONS (YNNPACK's convolutions).
  torchvision  ssd300_vgg16 or ssdlite320_mobilenet_v3_large (the config's classes)
               in train mode: forward, its loss, backward and torch.optim.SGD on the
               same batch (float32; on a GPU also bfloat16 autocast), for SSD300 and
               SSDLite320 rows (common.torchvision_peer).
  end_to_end   (--end_to_end, needs TensorFlow) the step fed by the real input pipeline
               (the release's augmentation on JPEGs cut from scikit-image's photos).
Model FLOPs per image are XLA's cost analysis of the compiled forward pass at batch 1
(convolutions and all); a train step counts 3x (the backward's input and weight
gradients each cost one forward), the convention behind "model FLOP/s". On a GPU the
share of the device's dense peak is printed when the device is in PEAK_TFLOPS.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import builders, config_lib, layers, sharding, train_step, xla_cpu
from ssd_jax.task import Task

import common  # experiments/common.py, beside this script

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets, per dtype.
PEAK_TFLOPS = {'NVIDIA H100 80GB HBM3': {'bfloat16': 989.0, 'float32': 67.0},
               'NVIDIA H200': {'bfloat16': 989.0, 'float32': 67.0}}


def make_config(name: str, width: float, dtype: str, batch: int):
  config = config_lib.load(str(ROOT / 'configs' / f'{name}.py'))
  config.model.width, config.model.dtype, config.train.batch_size = width, dtype, batch
  return config_lib.validate(config)


def random_batch(rng: np.random.Generator, batch: int, size: int, boxes: int = 4) -> dict:
  """uint8 images [B, S, S, 3], normalised xyxy boxes [B, M, 4], labels 1..20 [B, M]."""
  lo = rng.uniform(0, 0.6, (batch, boxes, 2))
  hi = lo + rng.uniform(0.1, 0.4, (batch, boxes, 2))
  return {'image': rng.integers(0, 256, (batch, size, size, 3), np.uint8),
          'boxes': np.concatenate([lo, hi], -1).astype(np.float32),
          'labels': rng.integers(1, 21, (batch, boxes)).astype(np.int32)}


def pipeline_batch(rng: np.random.Generator, batch: int, config, boxes: int = 4) -> dict:
  """A batch as the input pipeline hands it to the train step (pixels.FINISH_FIELDS:
  500 x 375 crops in the pixel buffer, drawn places, interpolations, colours and
  mirrors; boxes and labels as random_batch), so the step includes the pixel work."""
  from ssd_jax import pixels
  size, p = config.model.image_size, config.data.pixel_buffer
  images = random_batch(rng, batch, size, boxes)
  hw = np.minimum([375, 500], p)
  corner = rng.integers(0, size // 4, (batch, 2))
  extent = rng.integers(size // 2, size + 1, (batch, 2))
  place = np.concatenate([corner, np.minimum(corner + extent, size)], -1)
  buffer = np.zeros((batch, p, p, 3), np.uint8)
  buffer[:, :hw[0], :hw[1]] = rng.integers(0, 256, (batch, hw[0], hw[1], 3), np.uint8)
  colour = rng.uniform(0, 1, (batch, len(pixels.COLOUR_FIELDS))).round().astype(np.float32)
  colour[:, pixels.COLOUR_FIELDS.index('order_0'):pixels.COLOUR_FIELDS.index('order_2') + 1] = [
      2, 0, 1]
  colour[:, pixels.COLOUR_FIELDS.index('twist')] = 0  # the release's steps
  return {'pixels': buffer, 'pixels_size': np.tile(hw, (batch, 1)).astype(np.int32),
          'place': place.astype(np.int32),
          'method': rng.integers(0, len(pixels.RESIZE_METHODS), batch).astype(np.int32),
          'colour': colour, 'flip': rng.uniform(size=batch) < 0.5,
          'boxes': images['boxes'], 'labels': images['labels']}


def forward_flops(config) -> float:
  """Model FLOPs of one image's forward pass, from XLA's cost analysis."""
  model, size = builders.build_model(config), config.model.image_size
  variables = jax.eval_shape(lambda rng: builders.init_variables(config, rng),
                             jax.random.key(0))
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  compiled = jax.jit(model.apply).lower(variables, image).compile()
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)['flops'])


def jax_step_rate(config, batch: dict, repeats: int) -> float:
  """Images/s of the jitted train step on one fixed batch."""
  mesh = sharding.make_mesh()
  task = Task.of(config)
  state = [train_step.create_state(task, mesh, jax.random.key(0))]
  step = train_step.jit_train_step(task, mesh)
  anchors = jnp.asarray(task.default_boxes)
  device_batch = sharding.global_batch(batch, mesh)

  def one():
    state[0], metrics = step(state[0], device_batch, anchors)
    return metrics['loss']

  return len(batch['boxes']) / common.seconds_per_call(one, repeats, warmups=2)


def end_to_end_rate(config, repeats: int) -> float:
  """Images/s of the train step fed by the input pipeline (JPEG decode, augmentation)."""
  from ssd_jax.data import input_pipeline
  from ssd_jax.testing import synthetic
  root = pathlib.Path(tempfile.mkdtemp(prefix='bench_train_'))
  synthetic.photo_voc_folder(root, 64, class_names=('thing',))
  config = config_lib.validate(config.copy_and_resolve_references())
  d = config.data
  d.format, d.root, d.class_names = 'voc_folder', str(root), ('thing',)
  d.train_splits = ('trainval',)
  mesh = sharding.make_mesh()
  task = Task.of(config)
  state = [train_step.create_state(task, mesh, jax.random.key(0))]
  step = train_step.jit_train_step(task, mesh)
  anchors = jnp.asarray(task.default_boxes)
  batches = input_pipeline.train_batches(config)

  def one():
    state[0], metrics = step(state[0], sharding.global_batch(next(batches), mesh), anchors)
    return metrics['loss']

  return config.train.batch_size / common.seconds_per_call(one, repeats, warmups=2)


def torchvision_rate(config, batch: dict, repeats: int, device: str, autocast: bool) -> float:
  """Images/s of the train step (forward, loss, backward, SGD) of torchvision's model
  of the config's architecture (common.torchvision_peer)."""
  import torch
  model = common.torchvision_peer(config, device).train()
  opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
  if common.torchvision_peer_name(config) == 'nvidia_ssd300':
    return nvidia_rate(model, opt, config, batch, repeats, device, autocast)
  size = batch['image'].shape[1]
  images = [torch.tensor(im).permute(2, 0, 1).float().div(255).to(device) for im in batch['image']]
  targets = [{'boxes': torch.tensor(b * size).to(device),
              'labels': torch.tensor(l).long().to(device)}
             for b, l in zip(batch['boxes'], batch['labels'])]

  return torch_step_rate(lambda: sum(model(images, targets).values()), opt, len(images),
                         repeats, device, autocast)


def torch_step_rate(loss_of, opt, images: int, repeats: int, device: str,
                    autocast: bool) -> float:
  """Images/s of a PyTorch train step: loss_of() (under bfloat16 autocast if
  asked), backward, opt.step, synchronised."""
  import torch

  def one():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
      loss = loss_of()
    opt.zero_grad()
    loss.backward()
    opt.step()
    common.torch_sync(device)
    return jnp.zeros(())

  return images / common.seconds_per_call(one, repeats, warmups=2)


def nvidia_rate(model, opt, config, batch: dict, repeats: int, device: str,
                autocast: bool) -> float:
  """Images/s of NVIDIA's train step (forward, their loss, backward, SGD) on targets
  encoded beforehand, as their DALI pipeline hands them over (its box encoder
  runs in the input pipeline, not in the step): the boxes of random_batch
  matched to default boxes by ssd_jax's matching."""
  import torch
  from ssd_jax import matching
  from ssd_jax.testing import nvidia_ssd300
  task = Task.of(config)
  anchors = task.default_boxes
  loc, labels = jax.vmap(lambda b, l: matching.match_one(b, l, jnp.asarray(anchors)))(
      jnp.asarray(batch['boxes']), jnp.asarray(batch['labels']))[:2]
  glabel = torch.tensor(np.asarray(labels)).long().to(device)
  gloc = torch.tensor(np.tile(anchors.T[None], (len(glabel), 1, 1))).to(device)  # cxcywh
  loss_fn = nvidia_ssd300.NvidiaLoss(torch.tensor(anchors)).to(device)
  from ssd_jax.models import resnet
  mean = torch.tensor(resnet.IMAGENET_MEAN, device=device)[:, None, None]
  std = torch.tensor(resnet.IMAGENET_STD, device=device)[:, None, None]
  images = (torch.tensor(batch['image']).permute(0, 3, 1, 2).float().div(255).to(device)
            - mean) / std

  def loss_of():
    ploc, plabel = model(images)
    return loss_fn(ploc.float(), plabel.float(), gloc, glabel)

  return torch_step_rate(loss_of, opt, len(images), repeats, device, autocast)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=['voc300', 'voc512'])
  parser.add_argument('--batches', nargs='+', type=int, default=[8])
  parser.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'])
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--xla_gradients', action='store_true',
                      help="also time XLA's own pooling gradient")
  parser.add_argument('--xla_defaults', action='store_true',
                      help="also time the step under XLA's default CPU compiler options")
  parser.add_argument('--end_to_end', action='store_true',
                      help='also time the step fed by the input pipeline (needs TensorFlow)')
  parser.add_argument('--no_torchvision', action='store_true')
  args = parser.parse_args()
  device = jax.devices()[0]
  packages = common.versions('jax', 'jaxlib', 'flax', 'optax', 'torch', 'torchvision')
  torch_device = None if args.no_torchvision else common.torch_device()
  peak = PEAK_TFLOPS.get(device.device_kind, {})
  print(f'device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}); '
        f'{os.cpu_count()} CPU cores; width {args.width}; {packages}')
  print('| config | batch | dtype | what | img/s | vs torchvision | model TFLOP/s | of peak |')
  print('|---|---:|---|---|---:|---:|---:|---:|')
  rng = np.random.default_rng(0)
  for name in args.configs:
    for batch_size in args.batches:
      base = make_config(name, args.width, 'float32', batch_size)
      batch = random_batch(rng, batch_size, base.model.image_size)
      flops = 3 * forward_flops(base)
      torch_rate = None
      if not args.no_torchvision and common.torchvision_peer_name(base):
        torch_rate = torchvision_rate(base, batch, args.repeats, torch_device, False)
        row(name, batch_size, 'float32', 'torchvision', torch_rate, torch_rate, flops, {})
        if torch_device == 'cuda':
          row(name, batch_size, 'bfloat16', 'torchvision autocast',
              torchvision_rate(base, batch, args.repeats, 'cuda', True), torch_rate, flops, {})
      for dtype in args.dtypes:
        config = make_config(name, args.width, dtype, batch_size)
        options = xla_cpu.OPTIONS
        runs = ([('ssd_jax', True, options)]
                + ([('xla_grads', False, options)] if args.xla_gradients else [])
                + ([('xla_defaults', True, {})] if args.xla_defaults else []))
        for what, ours, cpu_options in runs:
          layers.USE_CPU_GRADIENTS, xla_cpu.OPTIONS = ours, cpu_options
          rate = jax_step_rate(config, batch, args.repeats)
          row(name, batch_size, dtype, what, rate, torch_rate, flops, peak)
        layers.USE_CPU_GRADIENTS, xla_cpu.OPTIONS = True, options
        if args.end_to_end:
          rate = end_to_end_rate(config, args.repeats)
          row(name, batch_size, dtype, 'end_to_end', rate, torch_rate, flops, peak)


def row(name, batch, dtype, what, rate, torch_rate, flops, peak):
  ratio = f'{rate / torch_rate:.2f}x' if torch_rate else '-'
  tflops = rate * flops / 1e12
  share = f'{tflops / peak[dtype]:.0%}' if dtype in peak else '-'
  print(f'| {name} | {batch} | {dtype} | {what} | {rate:.2f} | {ratio} | {tflops:.3f} | {share} |',
        flush=True)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())
