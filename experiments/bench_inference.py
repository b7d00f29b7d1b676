"""Benchmark: inference (network + post-processing) in images/second.

  python experiments/bench_inference.py [--configs voc300 voc512] [--batches 1 8] [--width 1.0]

For each config and batch size, measured in the same run on the same random
images and weights:
  ours       the jitted network and the jitted, batched post-processing
             (decode, softmax, per-class top-k, NMS, top 200) in one call;
  network    the jitted network alone (the ceiling post-processing can reach);
  xla_defaults  ours compiled with XLA's default options, not xla_cpu.OPTIONS
             (on CPU: YNNPACK's convolutions; elsewhere the same as ours);
  host_nms   the network, then outputs copied to the host and post-processed
             per image and per class with NumPy (how many ports do it);
  torchvision  (SSD300 and SSDLite320 at width 1) torchvision's ssd300_vgg16 or
             ssdlite320_mobilenet_v3_large (the config's classes) in eval mode on
             the same images: its transform, network and post-processing, under
             torch.inference_mode, on the same device. For SSD300-ResNet50
             (coco300_resnet50) NVIDIA's network as their code builds it
             (ssd_jax.testing.nvidia_ssd300), its forward pass alone: their
             decoder is a Python loop their own benchmarks leave out.
Ratios: ours / host_nms (> 1: faster), ours / network (<= 1; 1 = free
post-processing) and ours / torchvision. Random weights give many candidate
boxes per class (all 400 survive the 0.01 threshold), the slow case for NMS.
`--width 0.25` for a quick run on a CPU.
"""
import argparse
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import config_lib, postprocess, xla_cpu
from ssd_jax.task import Task
from ssd_jax.testing import numpy_reference

import common  # experiments/common.py, beside this script

ROOT = pathlib.Path(__file__).resolve().parent.parent


def bench(task: Task, batch: int, repeats: int) -> dict:
  config, model = task.config, task.model
  anchors = jnp.asarray(task.default_boxes)
  size = task.image_size
  images = jnp.asarray(np.random.default_rng(0).normal(0, 50, (batch, size, size, 3)),
                       jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1])  # variables: BatchNorm too
  network = xla_cpu.jit(model.apply, config)
  detect = functools.partial(postprocess.network_detections, model=model, anchors=anchors,
                             config=config)
  ours, xla_defaults = xla_cpu.jit(detect, config), jax.jit(detect)
  e, anchors_np = config.eval, np.asarray(anchors)

  def host_nms():
    loc, logits = jax.device_get(network(params, images))
    return [numpy_reference.postprocess(loc[i], logits[i], anchors_np, e.score_threshold,
                                        e.top_k, e.nms_iou, e.max_detections)
            for i in range(batch)]

  host_repeats = max(1, repeats // 4)
  timed = common.seconds_per_call
  seconds = {'ours': timed(lambda: ours(params, images), repeats),
             'network': timed(lambda: network(params, images), repeats),
             'xla_defaults': timed(lambda: xla_defaults(params, images), repeats),
             'host_nms': timed(lambda: (host_nms(), jnp.zeros(()))[1], host_repeats)}
  peer = common.torchvision_peer(config, common.torch_device())
  if peer is not None:
    seconds['torchvision'] = torchvision_seconds(peer, np.asarray(images), repeats)
  return {k: batch / v for k, v in seconds.items()}


def torchvision_seconds(model, images: np.ndarray, repeats: int) -> float:
  """Seconds per batch of a torchvision detector (eval mode)."""
  import torch
  device = common.torch_device()
  model = model.eval()
  batch = [torch.tensor(np.clip(im + 128, 0, 255) / 255, dtype=torch.float32).permute(2, 0, 1)
           .to(device) for im in images]
  if not hasattr(model, 'transform'):  # NVIDIA's SSD300: a normalised NCHW batch
    from ssd_jax.models import resnet
    mean = torch.tensor(resnet.IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(resnet.IMAGENET_STD, device=device)[:, None, None]
    batch = (torch.stack(batch) - mean) / std

  def run():
    with torch.inference_mode():
      model(batch)
    common.torch_sync(device)
    return jnp.zeros(())

  return common.seconds_per_call(run, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=['voc300', 'voc512'])
  parser.add_argument('--batches', nargs='+', type=int, default=[1, 8])
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--repeats', type=int, default=8)
  args = parser.parse_args()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, width {args.width}')
  print(f'{"config":8} {"batch":>5} {"ours img/s":>11} {"network":>9} {"host_nms":>9} '
        f'{"xla_defaults":>12} {"torchvision":>11} {"ours/host_nms":>14} {"ours/network":>13} '
        f'{"ours/xla_defaults":>18} {"ours/torchvision":>17}')
  for name in args.configs:
    config = config_lib.load(str(ROOT / 'configs' / f'{name}.py'))
    config.model.width = args.width
    task = Task.of(config)
    for batch in args.batches:
      r = bench(task, batch, args.repeats)
      tv = r.get('torchvision')
      print(f'{name:8} {batch:5d} {r["ours"]:11.2f} {r["network"]:9.2f} {r["host_nms"]:9.2f} '
            f'{r["xla_defaults"]:12.2f} {tv or float("nan"):11.2f} '
            f'{r["ours"] / r["host_nms"]:13.2f}x {r["ours"] / r["network"]:12.2f}x '
            f'{r["ours"] / r["xla_defaults"]:17.2f}x '
            f'{(r["ours"] / tv if tv else float("nan")):16.2f}x', flush=True)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main()
