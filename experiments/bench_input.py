"""Benchmark: the training input pipeline against torchvision's SSD augmentation.

  python experiments/bench_input.py [--images 96] [--batches 20] [--batch 32]

Writes a Pascal VOC folder of 500x375 JPEGs cut from scikit-image's sample
photographs (1-6 boxes each) to a temporary folder, then measures, each in a
process of its own, on the same files and all cores:
  ssd_jax      the training pipeline with the release's full augmentation
               (input_pipeline.train_dataset) on the VOC folder, and on the same
               JPEG bytes stored as a TFDS dataset (how VOC and COCO train);
  torchvision  transforms.v2 RandomPhotometricDistort, RandomZoomOut (mean
               fill), RandomIoUCrop, RandomHorizontalFlip, Resize(300x300) and
               SanitizeBoundingBoxes on torchvision.io-decoded images, in a
               torch DataLoader with one worker per core;
and prints images/s after the first batch, the ratio, host CPU milliseconds per
image (process CPU time of every thread, DataLoader workers included) and
images per CPU-second, and peak resident memory; then the device's share of
ssd_jax's pixel work (pixels.finish, jitted on this machine's JAX device).
Then the time from building the pipeline to its first batch when resuming at
step 100,000 of a 16,551-image split (VOC07+12's size; the same files listed
many times) against starting at step 0.
"""
import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import common  # experiments/common.py, beside this script (imports nothing heavy)

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
MEAN = (123, 117, 104)
VOC0712_TRAIN_SIZE = 16_551
TFDS_NAME = 'bench_photos'


def peak_rss_mb() -> dict:
  """Peak resident memory (MiB) of this process and of its largest finished child."""
  kib = lambda who: resource.getrusage(who).ru_maxrss / 1024  # noqa: E731  (Linux: KiB)
  return {'main': kib(resource.RUSAGE_SELF), 'largest_worker': kib(resource.RUSAGE_CHILDREN)}


def ssd_jax_config(root: str, batch: int, split: str = 'trainval', fmt: str = 'voc_folder'):
  """voc300's recipe on the photos: the VOC folder (PIL decodes each whole file),
  or fmt 'tfds', the same JPEG bytes as a TFDS dataset (TF decodes the crop alone)."""
  from ssd_jax import config_lib
  c = config_lib.load(str(pathlib.Path(__file__).resolve().parent.parent / 'configs' /
                          'voc300.py'))
  if fmt == 'tfds':
    c.data.data_dir, c.data.train_splits = os.path.join(root, 'tfds'), (f'{TFDS_NAME}:train',)
  else:
    c.data.format, c.data.root, c.data.class_names = 'voc_folder', root, ('thing',)
    c.model.num_classes, c.data.train_splits = 2, (split,)
  c.train.batch_size = batch
  return config_lib.validate(c)


def write_tfds(root: pathlib.Path) -> None:
  """The VOC folder's JPEGs, as they are (no re-encoding), and boxes as a TFDS
  dataset in VOC's feature layout, stored as ArrayRecord under root/tfds."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  from ssd_jax.data import custom_data
  records = custom_data.read_voc_folder(str(root), 'trainval', ('thing',))
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
      'image/filename': tfds.features.Text(),
      'objects': tfds.features.Sequence({'bbox': tfds.features.BBoxFeature(),
                                         'label': tfds.features.ClassLabel(num_classes=20),
                                         'is_difficult': tf.bool})})

  def example(r):
    yxyx = r.boxes[:, [1, 0, 3, 2]]
    return {'image': r.path, 'image/filename': os.path.basename(r.path),
            'objects': {'bbox': yxyx, 'label': r.labels - 1, 'is_difficult': r.difficult}}
  tfds.dataset_builders.store_as_tfds_dataset(
      name=TFDS_NAME, version='1.0.0', features=features, data_dir=str(root / 'tfds'),
      file_format='array_record', split_datasets={'train': [(i, example(r))
                                                            for i, r in enumerate(records)]})


def timed(it, batch: int, batches: int, cpu_seconds) -> dict:
  """Drains `batches` batches from `it`: images/s (wall) and host CPU ms per image
  (cpu_seconds(): CPU time of every thread and process doing the work)."""
  first = next(it)  # warm up: build, compile the graph, fill the prefetch buffer
  start, cpu = time.perf_counter(), cpu_seconds()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
  return {'images_per_second': batches * batch / wall,
          'cpu_ms_per_image': 1000 * cpu / (batches * batch)}, first


def device_ms_per_image(config, batch: dict) -> dict:
  """The pixel work the pipeline leaves to the device (pixels.finish), jitted, on
  this machine's default JAX device; nothing when the batch holds finished images."""
  if 'pixels' not in batch:
    return {}
  import jax
  from ssd_jax import pixels, xla_cpu
  fields = {k: jax.device_put(batch[k]) for k in pixels.FINISH_FIELDS}
  finish = xla_cpu.jit(lambda b: pixels.finish(b, config.model.image_size, config.data.mean_rgb),
                       config)
  seconds = common.seconds_per_call(lambda: finish(fields), repeats=5, warmups=1)
  return {'device_ms_per_image': 1000 * seconds / len(batch['pixels']),
          'device': str(jax.devices()[0].platform),
          'multiply_adds_per_image': pixels.multiply_adds_per_image(
              config.model.image_size, config.data.pixel_buffer)}


def run_ssd_jax(root: str, batch: int, batches: int, fmt: str = 'voc_folder') -> dict:
  from ssd_jax.data import input_pipeline
  config = ssd_jax_config(root, batch, fmt=fmt)
  it = input_pipeline.train_dataset(config, 0, 1).as_numpy_iterator()
  result, first = timed(it, batch, batches, time.process_time)  # all threads of this process
  return {**result, **device_ms_per_image(config, first)}


def run_torchvision(root: str, batch: int, batches: int) -> dict:
  import torch
  import torchvision
  from torchvision import tv_tensors
  from torchvision.transforms import v2
  from ssd_jax.data import custom_data

  records = custom_data.read_voc_folder(root, 'trainval', ('thing',))  # parsed once, as ours
  transform = v2.Compose([
      v2.RandomPhotometricDistort(p=0.5),
      v2.RandomZoomOut(fill={tv_tensors.Image: MEAN, 'others': 0}),
      v2.RandomIoUCrop(),
      v2.RandomHorizontalFlip(p=0.5),
      v2.Resize((300, 300)),
      v2.SanitizeBoundingBoxes(),
  ])

  class Dataset(torch.utils.data.Dataset):
    def __len__(self):
      return len(records)

    def __getitem__(self, i):
      r = records[i]
      image = torchvision.io.decode_image(torchvision.io.read_file(r.path))
      h, w = image.shape[-2:]
      boxes = tv_tensors.BoundingBoxes(torch.from_numpy(r.boxes) * torch.tensor([w, h, w, h]),
                                       format='XYXY', canvas_size=(h, w))
      return transform(tv_tensors.Image(image), {'boxes': boxes,
                                                 'labels': torch.from_numpy(r.labels)})

  loader = torch.utils.data.DataLoader(
      Dataset(), batch_size=batch, shuffle=True, num_workers=os.cpu_count(),
      collate_fn=lambda items: (torch.stack([x for x, _ in items]), [t for _, t in items]),
      worker_init_fn=lambda _: torch.set_num_threads(1), persistent_workers=True,
      drop_last=True)

  def endless():
    while True:
      yield from loader
  import psutil

  def cpu_seconds():  # this process and its DataLoader workers, every thread
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))
  result, _ = timed(endless(), batch, batches, cpu_seconds)
  return result


def run_first_batch(root: str, batch: int, start_step: int) -> dict:
  from ssd_jax.data import input_pipeline
  start = time.perf_counter()
  ds = input_pipeline.train_dataset(ssd_jax_config(root, batch, 'big'), 0, 1,
                                    start_step=start_step)
  next(iter(ds))
  return {'seconds_to_first_batch': time.perf_counter() - start}


def write_data(root: pathlib.Path, images: int) -> None:
  """The photo VOC folder, plus split 'big': VOC07+12's size, the same files listed
  again (each listed id gets its own annotation file and a hard link to a JPEG)."""
  from ssd_jax.testing import synthetic
  ids = synthetic.photo_voc_folder(root, images)
  big = []
  for k in range(VOC0712_TRAIN_SIZE):
    source, name = ids[k % len(ids)], f'big{k:06d}'
    os.link(root / 'JPEGImages' / f'{source}.jpg', root / 'JPEGImages' / f'{name}.jpg')
    (root / 'Annotations' / f'{name}.xml').write_text(
        (root / 'Annotations' / f'{source}.xml').read_text())
    big.append(name)
  (root / 'ImageSets' / 'Main' / 'big.txt').write_text('\n'.join(big) + '\n')


def child(args, *extra) -> dict:
  """Runs this script on one measurement in a fresh process; its JSON result."""
  out = subprocess.run([sys.executable, __file__, '--root', args.root, '--batch',
                        str(args.batch), '--batches', str(args.batches), *extra],
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'{extra} failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=96)
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--root', help=argparse.SUPPRESS)
  parser.add_argument('--run', help=argparse.SUPPRESS)
  parser.add_argument('--start', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.run:  # one measurement, in its own process
    if args.run == 'first_batch':
      result = run_first_batch(args.root, args.batch, args.start)
    elif args.run == 'ssd_jax_tfds':
      result = run_ssd_jax(args.root, args.batch, args.batches, 'tfds')
    else:
      result = {'ssd_jax': run_ssd_jax, 'torchvision': run_torchvision}[args.run](
          args.root, args.batch, args.batches)
    print(json.dumps({**result, 'peak_rss_mb': peak_rss_mb()}))
    return
  with tempfile.TemporaryDirectory() as tmp:
    args.root = tmp
    write_data(pathlib.Path(tmp), args.images)
    write_tfds(pathlib.Path(tmp))
    tv = child(args, '--run', 'torchvision')
    ours = child(args, '--run', 'ssd_jax')
    ours_tfds = child(args, '--run', 'ssd_jax_tfds')
    fresh = min(child(args, '--run', 'first_batch', '--start', '0')['seconds_to_first_batch']
                for _ in range(2))
    resumed = min(child(args, '--run', 'first_batch', '--start', '100000')[
        'seconds_to_first_batch'] for _ in range(2))
  print(f'{os.cpu_count()} CPU cores; {args.images} JPEGs of 500x375 from scikit-image photos '
        f'-> 300x300, batch {args.batch}, {args.batches} batches timed after the first')
  print('versions: ' + common.versions('tensorflow-cpu', 'torch', 'torchvision', 'pillow'))
  print(f'{"pipeline":<44} {"images/s":>9} {"ratio":>6} {"host CPU ms/img":>16} '
        f'{"img/s per core":>15} {"peak RSS MiB (main / worker)":>30}')
  for name, r in (('torchvision v2 SSD augmentation, DataLoader', tv),
                  ('ssd_jax, VOC folder (PIL decodes whole files)', ours),
                  ('ssd_jax, TFDS (TF decodes the crop alone)', ours_tfds)):
    m = r['peak_rss_mb']
    workers = f'{m["largest_worker"]:.0f} x {os.cpu_count()}' if name.startswith('torch') else '-'
    print(f'{name:<44} {r["images_per_second"]:9.1f} '
          f'{r["images_per_second"] / tv["images_per_second"]:5.2f}x '
          f'{r["cpu_ms_per_image"]:16.2f} {1000 / r["cpu_ms_per_image"]:15.1f} '
          f'{m["main"]:>18.0f} / {workers}')
  if 'device_ms_per_image' in ours:
    print(f'left to the device (pixels.finish: resample, colour, mirror), jitted on '
          f'{ours["device"]}: {ours["device_ms_per_image"]:.2f} ms per image, '
          f'{ours["multiply_adds_per_image"] / 1e6:.0f} M multiply-adds per image')
  print(f'first batch on a {VOC0712_TRAIN_SIZE:,}-image split: step 0 {fresh:.2f} s, '
        f'step 100,000 {resumed:.2f} s (ratio {resumed / fresh:.2f})')


if __name__ == '__main__':
  sys.exit(main())
