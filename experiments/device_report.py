"""Device report: ssd_jax's models on one accelerator, against torchvision's on the same one.

  python experiments/device_report.py [--budget_s 420] [--tiny]

For SSD300, SSD512 and SSDLite320 (VOC's 21 classes) and SSD300-ResNet50
(COCO's 81), measured in one run:
  train      the jitted train step on a batch laid out as the input pipeline
             hands it over (decoded crops in the pixel buffer: the device's
             pixel work is included), float32 and bfloat16, batch 32 to 256;
  inference  the jitted network and batched post-processing, batch 1 to 256;
  torchvision  ssd300_vgg16 / ssdlite320_mobilenet_v3_large at the same batches
             on the same device: train (forward, loss, backward, SGD; bfloat16
             as autocast) and inference (eval mode); SSD512 has no peer there.
             For SSD300-ResNet50 the peer is NVIDIA's network and loss as their
             code writes them (ssd_jax.testing.nvidia_ssd300; targets encoded
             beforehand, as their DALI pipeline does; inference: the forward
             pass): compare its train rows with their published 724 img/s (AMP,
             batch 128, one A100-80GB).
Each row: images/s, model TFLOP/s (XLA's cost analysis of the forward pass;
a train step counts 3x), its share of the device's dense peak (known devices),
peak device memory (ours: XLA's memory analysis of the compiled program,
arguments, outputs and temporaries; torch: torch.cuda.max_memory_allocated),
and the seconds the row took, compilation included.
Rows run in order of importance until --budget_s is spent (compilation
included); those left are listed. --tiny: width-1/16 models on this machine's
CPU, SSD300's float32 train step at batch 2 and bfloat16 inference at batch 1,
SSDLite's and SSD300-ResNet50's inference beside their peers' at full width
(the test suite runs it; its ratios mean nothing).

Imports nothing of TensorFlow. On a GPU machine with JAX (CUDA), flax, optax,
orbax, numpy, torch and torchvision but no ml-collections, carry its wheel:
here, in the repository's root,
  python3 -m pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0
and there, from the repository's root,
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site python3 experiments/device_report.py
"""
from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import builders, postprocess, sharding, train_step
from ssd_jax.task import Task

import bench_inference  # experiments/, beside this script
import bench_train
import common

MODELS = ('voc300', 'voc512', 'voc_ssdlite320', 'coco300_resnet50')


def plan(tiny: bool) -> list[tuple]:
  """(kind, model, dtype, batch) rows, most important first."""
  if tiny:
    return [('train', 'voc300', 'float32', 2), ('inference', 'voc300', 'bfloat16', 1),
            ('inference', 'voc_ssdlite320', 'float32', 1),
            ('inference', 'coco300_resnet50', 'float32', 1)]
  rows = [(k, m, d, b) for b in (64,) for m in MODELS for k in ('train', 'inference')
          for d in ('bfloat16', 'float32')]
  rows += [('inference', m, d, 1) for m in MODELS for d in ('float32', 'bfloat16')]
  rows += [(k, m, d, b) for b in (256, 32, 128) for m in MODELS for k in ('train', 'inference')
           for d in ('bfloat16', 'float32')]
  rows += [('inference', m, d, 8) for m in MODELS for d in ('float32', 'bfloat16')]
  return rows


def memory_mib(compiled) -> float:
  m = compiled.memory_analysis()
  if m is None:
    return float('nan')
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return total / 2**20


def ours_train(config, batch: int, repeats: int) -> tuple[float, float]:
  """(images/s, MiB) of the train step on a pipeline-layout batch."""
  rng = np.random.default_rng(0)
  mesh = sharding.make_mesh()
  data = sharding.global_batch(bench_train.pipeline_batch(rng, batch, config), mesh)
  task = Task.of(config)
  state = [train_step.create_state(task, mesh, jax.random.key(0))]
  anchors = jnp.asarray(task.default_boxes)
  step = train_step.jit_train_step(task, mesh)
  compiled = step.lower(state[0], data, anchors).compile()

  def one():
    state[0], metrics = compiled(state[0], data, anchors)
    return metrics['loss']
  return batch / common.seconds_per_call(one, repeats, warmups=2), memory_mib(compiled)


def ours_inference(config, batch: int, repeats: int) -> tuple[float, float]:
  task = Task.of(config)
  size = task.image_size
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3)),
                       jnp.uint8)
  variables = builders.inference_variables(jax.jit(task.init_variables)(jax.random.key(0)))
  run = jax.jit(functools.partial(postprocess.network_detections, model=task.model,
                                  config=task.config, anchors=jnp.asarray(task.default_boxes)))
  compiled = run.lower(variables, images).compile()
  return batch / common.seconds_per_call(lambda: compiled(variables, images), repeats), \
      memory_mib(compiled)


def torch_memory(device: str, fn) -> tuple[float, float]:
  if device != 'cuda':
    return fn(), float('nan')
  import torch
  torch.cuda.empty_cache()
  torch.cuda.reset_peak_memory_stats()
  rate = fn()
  return rate, torch.cuda.max_memory_allocated() / 2**20


def torchvision_row(kind, config, dtype, batch, repeats, device):
  """(images/s, MiB) of torchvision's peer, or None (no peer; bfloat16 inference on a CPU)."""
  if not common.torchvision_peer_name(config) or (dtype == 'bfloat16' and device != 'cuda'):
    return None
  rng = np.random.default_rng(0)
  images = bench_train.random_batch(rng, batch, config.model.image_size)
  if kind == 'train':
    return torch_memory(device, lambda: bench_train.torchvision_rate(
        config, images, repeats, device, dtype == 'bfloat16'))
  peer = common.torchvision_peer(config, device)
  pixels = images['image'].astype(np.float32) - 128

  def rate():
    import torch
    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      return batch / bench_inference.torchvision_seconds(peer, pixels, repeats)
  return torch_memory(device, rate)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--budget_s', type=float, default=420.0)
  parser.add_argument('--tiny', action='store_true')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  start, device = time.monotonic(), jax.devices()[0]
  torch_device = common.torch_device()
  repeats = 1 if args.tiny else args.repeats
  peak = bench_train.PEAK_TFLOPS.get(device.device_kind, {})
  print(f'device: {device.device_kind} ({jax.default_backend()}), torch on {torch_device}; '
        f'{common.versions("jax", "jaxlib", "flax", "optax", "torch", "torchvision")}')
  print('| model | what | dtype | batch | ssd_jax img/s | TFLOP/s | of peak | MiB '
        '| torchvision img/s | MiB | ratio | s |')
  print('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  flops, left = {}, []
  for kind, name, dtype, batch in plan(args.tiny):
    if time.monotonic() - start > args.budget_s:
      left.append(f'{kind} {name} {dtype} b{batch}')
      continue
    row_start = time.monotonic()
    config = bench_train.make_config(name, 1 / 16 if args.tiny else 1.0, dtype, batch)
    if name not in flops:
      flops[name] = bench_train.forward_flops(config)
    try:
      rate, mib = (ours_train if kind == 'train' else ours_inference)(config, batch, repeats)
    except Exception as e:  # noqa: BLE001 - out of memory at a large batch: say so, go on
      print(f'| {name} | {kind} | {dtype} | {batch} | failed: {type(e).__name__} |', flush=True)
      continue
    tv = None if args.tiny and name == 'voc300' else torchvision_row(
        kind, bench_train.make_config(name, 1.0, dtype, batch), dtype, batch, repeats,
        torch_device)
    tflops = rate * flops[name] * (3 if kind == 'train' else 1) / 1e12
    share = f'{tflops / peak[dtype]:.1%}' if dtype in peak else '-'
    tv_text = f'{tv[0]:.1f} | {tv[1]:.0f} | {rate / tv[0]:.2f}x' if tv else '- | - | -'
    print(f'| {name} | {kind} | {dtype} | {batch} | {rate:.1f} | {tflops:.3g} | {share} | '
          f'{mib:.0f} | {tv_text} | {time.monotonic() - row_start:.0f} |', flush=True)
  print(f'{time.monotonic() - start:.0f} s in all' +
        (f'; not run (budget): {", ".join(left)}' if left else ''))


if __name__ == '__main__':
  sys.exit(main())
