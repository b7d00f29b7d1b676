"""Benchmark: the training input pipeline against torchvision's SSD augmentation.

  python experiments/bench_input.py [--images 96] [--batches 20] [--batch 32]

Writes a Pascal VOC folder of 500x375 JPEGs cut from scikit-image's sample
photographs (1-6 boxes each) to a temporary folder, then measures, each in a
process of its own, on the same files and all cores:
  ssd_jax      the training pipeline with the release's full augmentation
               (input_pipeline.train_dataset);
  torchvision  transforms.v2 RandomPhotometricDistort, RandomZoomOut (mean
               fill), RandomIoUCrop, RandomHorizontalFlip, Resize(300x300) and
               SanitizeBoundingBoxes on torchvision.io-decoded images, in a
               torch DataLoader with one worker per core;
and prints images/s after the first batch, the ratio, and peak resident memory.
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


def peak_rss_mb() -> dict:
  """Peak resident memory (MiB) of this process and of its largest finished child."""
  kib = lambda who: resource.getrusage(who).ru_maxrss / 1024  # noqa: E731  (Linux: KiB)
  return {'main': kib(resource.RUSAGE_SELF), 'largest_worker': kib(resource.RUSAGE_CHILDREN)}


def ssd_jax_config(root: str, batch: int, split: str = 'trainval'):
  from ssd_jax import config_lib
  c = config_lib.load(str(pathlib.Path(__file__).resolve().parent.parent / 'configs' /
                          'voc300.py'))
  c.data.format, c.data.root, c.data.class_names = 'voc_folder', root, ('thing',)
  c.model.num_classes, c.data.train_splits, c.train.batch_size = 2, (split,), batch
  return config_lib.validate(c)


def run_ssd_jax(root: str, batch: int, batches: int) -> dict:
  from ssd_jax.data import input_pipeline
  it = input_pipeline.train_dataset(ssd_jax_config(root, batch), 0, 1).as_numpy_iterator()
  next(it)  # warm up: build, compile the graph, fill the prefetch buffer
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return {'images_per_second': batches * batch / (time.perf_counter() - start)}


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
  it = endless()
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return {'images_per_second': batches * batch / (time.perf_counter() - start)}


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
    else:
      result = {'ssd_jax': run_ssd_jax, 'torchvision': run_torchvision}[args.run](
          args.root, args.batch, args.batches)
    print(json.dumps({**result, 'peak_rss_mb': peak_rss_mb()}))
    return
  with tempfile.TemporaryDirectory() as tmp:
    args.root = tmp
    write_data(pathlib.Path(tmp), args.images)
    tv = child(args, '--run', 'torchvision')
    ours = child(args, '--run', 'ssd_jax')
    fresh = min(child(args, '--run', 'first_batch', '--start', '0')['seconds_to_first_batch']
                for _ in range(2))
    resumed = min(child(args, '--run', 'first_batch', '--start', '100000')[
        'seconds_to_first_batch'] for _ in range(2))
  print(f'{os.cpu_count()} CPU cores; {args.images} JPEGs of 500x375 from scikit-image photos '
        f'-> 300x300, batch {args.batch}, {args.batches} batches timed after the first')
  print('versions: ' + common.versions('tensorflow-cpu', 'torch', 'torchvision', 'pillow'))
  print(f'{"pipeline":<44} {"images/s":>9} {"ratio":>6} {"peak RSS MiB (main / worker)":>30}')
  for name, r in (('torchvision v2 SSD augmentation, DataLoader', tv),
                  ('ssd_jax, the release\'s augmentation', ours)):
    m = r['peak_rss_mb']
    workers = f'{m["largest_worker"]:.0f} x {os.cpu_count()}' if name.startswith('torch') else '-'
    print(f'{name:<44} {r["images_per_second"]:9.1f} '
          f'{r["images_per_second"] / tv["images_per_second"]:5.2f}x '
          f'{m["main"]:>18.0f} / {workers}')
  print(f'first batch on a {VOC0712_TRAIN_SIZE:,}-image split: step 0 {fresh:.2f} s, '
        f'step 100,000 {resumed:.2f} s (ratio {resumed / fresh:.2f})')


if __name__ == '__main__':
  sys.exit(main())
