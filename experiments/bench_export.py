"""Benchmark: batch-1 latency of the exported detector in each runtime, on CPU.

  python experiments/bench_export.py [--workdir RUN [--eval_images N]] [--config voc300] [--width 1.0]

In one run, on scikit-image's sample photos (each image whole, any size; the
artifacts resize inside, the Detector resizes with the same JAX code):
  jax_detector     Detector: jitted resize, then the jitted network + post-processing;
  jax_exported     Detector.from_exported: the `--format=jax` artifact (jax.export);
  saved_model      the SavedModel's serving_default in TensorFlow (XlaCallModule);
  tflite_float     the TFLite model in tf.lite.Interpreter (XNNPACK, all cores),
                   ending in TFLite's detection post-process op;
  tflite_int8      the same with dynamic-range int8 weights;
  tflite_full_int8 every network operation int8 (calibrated on the photos, or
                   with --workdir on 200 training images), uint8 input at the
                   network's size (resized outside, in JAX);
  onnx             the ONNX model in ONNX Runtime (CPU, all cores);
  torchvision      (SSD300 and SSDLite320 at width 1) torchvision's model of the
                   same architecture (random weights, eval mode, inference_mode,
                   all cores): its transform, network and post-processing; the
                   "vs torchvision" column is its median over each runtime's.
Each runtime sees each photo once untimed (compilation, tensor allocation),
then --repeats timed calls in a row; the table gives the median and the
fastest call over all photos, the artifact's size and how many of the JAX
Detector's detections (same class, box within 0.5 px and score within 1e-3;
int8: IoU >= 0.5 and score within 0.02) it reproduces; the TFLite op's own
NMS rules (ssd_jax/tflite.py) cost the float model a few. Without --workdir the
config's model has random variables (synthetic.random_variables: He-normal,
random BatchNorm statistics), whose scores put hundreds of boxes per
class above the threshold: the slow case for NMS, and a hard one for int8.
`--width 0.25` for a quick run. With --workdir and --eval_images=N, each runtime's mAP on the first N
images of the run's eval split (the metric of --mode=eval).
"""
import argparse
import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
try:  # torch (the torchvision row) must load its native libraries before TensorFlow's
  import torch  # noqa: E402, F401  (the other order crashed the process)
except ImportError:
  pass

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssd_jax import config_lib, detector, export, tflite  # noqa: E402
from ssd_jax.testing import detections, synthetic  # noqa: E402
from ssd_jax.task import Task

import common  # noqa: E402  (experiments/common.py, beside this script)

ROOT = pathlib.Path(__file__).resolve().parent.parent
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket')


def latencies(run, images, repeats: int) -> list[float]:
  """Seconds of each timed call of run(image): per image, one untimed call, then repeats."""
  seconds = []
  for image in images:
    run(image)
    for _ in range(repeats):
      start = time.perf_counter()
      run(image)
      seconds.append(time.perf_counter() - start)
  return seconds


def torchvision_runner(config):
  """Batch-1 detection with torchvision's peer model (common.torchvision_peer) on
  CPU, or None when torchvision has no such model."""
  import torch
  model = common.torchvision_peer(config, 'cpu')
  if model is None:
    return None
  model = model.eval()

  def run(image):
    with torch.inference_mode():
      out = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    return {'boxes': out['boxes'].numpy(), 'scores': out['scores'].numpy(),
            'classes': out['labels'].numpy()}
  return run


def representative(images, size: int):
  """full_int8's calibration set: the benchmark's photos, resized and rounded as
  tflite.representative_images makes them."""
  return lambda: (detector.resize_to_uint8(image[None], size).astype(np.float32)
                  for image in images)


def detector_runner(det):
  return lambda image: det.detect([image])[0]


def size_mb(folder: str) -> float:
  return sum(f.stat().st_size for f in pathlib.Path(folder).rglob('*') if f.is_file()) / 1e6


def agreement(reference: list[dict], found: list[dict], int8: bool) -> float:
  """Share of the reference's detections that `found` reproduces (see the doc)."""
  kept = []
  for ours, theirs in zip(reference, found):
    if int8:
      kept.append(detections.has_partner(ours, theirs, 0.02, min_iou=0.5))
    else:
      kept.append(detections.has_partner(ours, theirs, 1e-3, box_tol=0.5))
  return float(np.concatenate(kept).mean())


def model(args):
  """(task, variables as NumPy): --workdir's latest checkpoint, else a random --config."""
  if args.workdir:
    task, params, _ = export.load(args.workdir)
    return task, params
  config = config_lib.load(str(ROOT / 'configs' / f'{args.config}.py'))
  config.model.width = args.width
  task = Task.of(config)
  return task, synthetic.random_variables(task.config)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default=None, help='a trained run (default: random model)')
  parser.add_argument('--config', default='voc300')
  parser.add_argument('--width', type=float, default=1.0)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--photos', nargs='+', default=list(PHOTOS))
  parser.add_argument('--eval_images', type=int, default=0,
                      help='with --workdir: the mAP of each runtime on this many images of '
                      'the eval split (evaluate.evaluate_detectors)')
  parser.add_argument('--no_torchvision', action='store_true',
                      help='skip the torchvision row (with torch and TensorFlow in one '
                      'process it crashed on SSDLite320 here)')
  args = parser.parse_args()
  import skimage.data
  import tensorflow as tf
  images = [getattr(skimage.data, name)() for name in args.photos]
  task, params = model(args)
  config = task.config
  n_params = sum(x.size for x in jax.tree.leaves(params['params']))
  print(f'jax {jax.__version__}, tensorflow {tf.__version__}, device: '
        f'{jax.devices()[0].device_kind}, {os.cpu_count()} CPU threads; '
        f'{args.workdir or args.config} width {config.model.width}: {n_params / 1e6:.1f}M '
        f'parameters, {config.model.num_classes} classes; photos '
        f'{", ".join(f"{n} {i.shape[1]}x{i.shape[0]}" for n, i in zip(args.photos, images))}',
        flush=True)
  rows = [('jax_detector', None, None, 0.0, detector.Detector(task, params))]
  with tempfile.TemporaryDirectory() as tmp:
    calibration = (tflite.representative_images(task) if args.workdir
                   else representative(images, task.image_size))
    for name, fmt, quantize in (('jax_exported', 'jax', 'none'),
                                ('saved_model', 'saved_model', 'none'),
                                ('tflite_float', 'tflite', 'none'),
                                ('tflite_int8', 'tflite', 'int8'),
                                ('tflite_full_int8', 'tflite', 'full_int8'),
                                ('onnx', 'onnx', 'none')):
      start = time.perf_counter()
      out = os.path.join(tmp, name)
      info = export.write(out, task, params, fmt, quantize=quantize, representative=calibration)
      seconds = time.perf_counter() - start
      rows.append((name, out, size_mb(out), seconds, detector.Detector.from_exported(out)))
      if quantize == 'full_int8':
        print(f'{name}: operations left in float: {info["float_ops"]}')
    peer = None if args.no_torchvision else torchvision_runner(config)
    peer_median = statistics.median(latencies(peer, images, args.repeats)) if peer else None
    print('\n| runtime | median ms | fastest ms | vs JAX Detector | vs torchvision | size MB '
          '| export s | agreement | mAP |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    if peer_median:
      print(f'| torchvision (random weights) | {1e3 * peer_median:.1f} | - | - | 1.00x | - | - '
            f'| - | - |')
    reference = jax_median = None
    for name, out, size, seconds, det in rows:
      run = detector_runner(det)
      found = [run(image) for image in images]
      reference = reference or found
      t = latencies(run, images, args.repeats)
      jax_median = jax_median or statistics.median(t)
      size_text = f'{size:.1f}' if size else '-'
      ratio = f'{peer_median / statistics.median(t):.2f}x' if peer_median else '-'
      accuracy = '-'
      if args.eval_images:
        from ssd_jax import evaluate
        (result,) = evaluate.evaluate_detectors(task, [det], args.eval_images)
        accuracy = f'{evaluate.headline(result)[1]:.4f}'
      print(f'| {name} | {1e3 * statistics.median(t):.1f} | {1e3 * min(t):.1f} | '
            f'{statistics.median(t) / jax_median:.2f}x | {ratio} | {size_text} | {seconds:.1f} | '
            f'{agreement(reference, found, name.endswith("int8")):.3f} | {accuracy} |',
            flush=True)


if __name__ == '__main__':
  main()
