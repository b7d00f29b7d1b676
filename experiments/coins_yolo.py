"""A small real-photo detection set in the Ultralytics YOLO layout, from scikit-image's
`coins` photograph (Greek coins, Walters Art Museum; bundled with scikit-image, no
download), to train ssd_jax on end to end as a user would.

No labelled public detection dataset can be installed from the package registries
this project reaches, so this is the honest stand-in: the 24 coins of one photo,
boxed by a segmentation (Sobel edges + watershed + hole filling, the method of
scikit-image's own coins example) and checked by eye on a drawing of the boxes
(`--check=PNG` writes one). The three top rows of coins (18) give the train
images and the bottom row (6 coins) the val images, so no val coin is trained on:
random square crops of each region, 64-200 px, keeping a coin when at least half
of it is inside the crop and leaving out crops that cut a coin more than that.

  python experiments/coins_yolo.py --out=/tmp/coins
  python -m ssd_jax.main --config=configs/shapes.py --workdir=/tmp/coins_run \\
      --mode=train_and_eval --config.data.format=yolo --config.data.root=/tmp/coins \\
      --config.data.train_splits='("train",)' --config.data.eval_split=val \\
      --config.train.num_steps=400 --config.optim.boundaries='(270,350)' \\
      --config.train.checkpoint_every=200 --config.eval.num_rendered=8

The class name (coin) comes from data.yaml and model.num_classes (2) from it.
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

TRAIN_ROWS_END = 225  # pixel row between the third and the fourth row of coins


def coin_boxes(photo: np.ndarray) -> np.ndarray:
  """int [24, 4] pixel xyxy (x1, y1 exclusive) of the coins of skimage.data.coins()."""
  import scipy.ndimage as ndi
  import skimage.filters
  import skimage.measure
  import skimage.segmentation
  markers = np.zeros_like(photo)
  markers[photo < 30], markers[photo > 150] = 1, 2
  regions = ndi.binary_fill_holes(skimage.segmentation.watershed(
      skimage.filters.sobel(photo), markers) - 1)
  props = [p for p in skimage.measure.regionprops(skimage.measure.label(regions))
           if p.area > 150]
  return np.array([(p.bbox[1], p.bbox[0], p.bbox[3], p.bbox[2]) for p in props])


def crops(region: tuple, boxes: np.ndarray, n: int, rng, min_side=64, max_side=200):
  """n (crop xyxy, boxes inside it) of a region (x0, y0, x1, y1): squares whose every
  coin is either at least half inside (kept, clipped) or wholly outside."""
  x0, y0, x1, y1 = region
  out = []
  while len(out) < n:
    side = int(rng.integers(min_side, min(max_side, x1 - x0, y1 - y0) + 1))
    cx, cy = int(rng.integers(x0, x1 - side + 1)), int(rng.integers(y0, y1 - side + 1))
    window = np.array([cx, cy, cx + side, cy + side])
    inner = np.concatenate([np.maximum(boxes[:, :2], window[:2]),
                            np.minimum(boxes[:, 2:], window[2:])], 1)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    share = area(inner) / area(boxes)
    if np.any((share > 0) & (share < 0.5)) or not np.any(share >= 0.5):
      continue
    out.append((window, inner[share >= 0.5] - np.tile(window[:2], 2)))
  return out


def write_split(root: str, split: str, photo: np.ndarray, items) -> None:
  """images/<split>/NNNN.jpg and labels/<split>/NNNN.txt (class 0, normalised cxcywh)."""
  for sub in ('images', 'labels'):
    os.makedirs(os.path.join(root, sub, split), exist_ok=True)
  for i, (window, boxes) in enumerate(items):
    x0, y0, x1, y1 = window
    side = x1 - x0
    Image.fromarray(photo[y0:y1, x0:x1]).convert('RGB').save(
        os.path.join(root, 'images', split, f'{i:04d}.jpg'), quality=92)
    with open(os.path.join(root, 'labels', split, f'{i:04d}.txt'), 'w') as f:
      for bx0, by0, bx1, by1 in boxes / side:
        f.write(f'0 {(bx0 + bx1) / 2:.6f} {(by0 + by1) / 2:.6f} {bx1 - bx0:.6f} '
                f'{by1 - by0:.6f}\n')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--train', type=int, default=400)
  parser.add_argument('--val', type=int, default=60)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--check', help='also draw the 24 boxes on the photo into this PNG')
  args = parser.parse_args()
  import skimage.data
  photo = skimage.data.coins()
  boxes = coin_boxes(photo)
  assert len(boxes) == 24, len(boxes)
  if args.check:
    picture = Image.fromarray(photo).convert('RGB')
    for b in boxes:
      ImageDraw.Draw(picture).rectangle((b[0], b[1], b[2] - 1, b[3] - 1), outline=(255, 0, 0))
    picture.save(args.check)
  rng = np.random.default_rng(args.seed)
  h, w = photo.shape
  top = boxes[:, 3] <= TRAIN_ROWS_END
  assert top.sum() == 18 and (boxes[~top, 1] >= TRAIN_ROWS_END).all()
  write_split(args.out, 'train', photo, crops((0, 0, w, TRAIN_ROWS_END), boxes[top],
                                              args.train, rng))
  write_split(args.out, 'val', photo, crops((0, TRAIN_ROWS_END - 4, w, h), boxes[~top],
                                            args.val, rng, max_side=82))
  with open(os.path.join(args.out, 'data.yaml'), 'w') as f:
    f.write('# coins of skimage.data.coins(): experiments/coins_yolo.py\n'
            'path: .\ntrain: images/train\nval: images/val\nnames:\n  0: coin\n')
  print(f'{args.train} train and {args.val} val images in {args.out}')


if __name__ == '__main__':
  main()
