"""`ssd_shapes`: a detection dataset generated locally, for the offline quickstart.

A TFDS builder: `tfds.load('ssd_shapes')` generates it on first use (no
download; same bytes on every machine) and it then flows through the same
pipeline as VOC. Each image is a textured background (a colour gradient,
stripes or a checkerboard, plus noise) with one to five shapes of random
colour whose class is their shape; sizes run from small (an eighth of the
image side) to large (three quarters), and shapes may overlap (at most 30% of
a box). A box is the extent of a shape's visible pixels, as VOC's annotation
guidelines ask (not the estimated whole of an occluded shape). Features mirror
TFDS `voc`: `image`, `image/filename`, `image/id` and
`objects` with `bbox` (normalised yxyx), `label` and `is_difficult` (False).

Configs: `default` (4000 train, 500 test images) and `small` (64 / 16, for
tests and quick demos).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from ssd_jax import labels

CLASS_NAMES = labels.SHAPES_NAMES
NAME = 'ssd_shapes'


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  num_train: int = 4000
  num_test: int = 500
  image_size: int = 128
  max_objects: int = 5
  min_side: float = 0.15      # object side, fraction of the image side
  max_side: float = 0.6
  max_overlap: float = 0.3    # most of a shape's box another may cover


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """f32 [size, size, 3] in [0, 255]: a gradient, stripes or checkerboard, with noise."""
  y, x = np.mgrid[0:size, 0:size] / size
  a, b = rng.uniform(0, 160, 3), rng.uniform(0, 160, 3)
  kind = rng.integers(3)
  if kind == 0:
    t = (x * np.cos(rng.uniform(0, np.pi)) + y * np.sin(rng.uniform(0, np.pi))) / 2 + 0.5
  elif kind == 1:
    period = rng.uniform(0.05, 0.25)
    t = (np.sin(2 * np.pi * (x + rng.uniform() * y) / period) > 0).astype(float)
  else:
    cell = rng.uniform(0.08, 0.3)
    t = ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(float)
  image = a + t[..., None] * (b - a)
  return image + rng.normal(0, 12, image.shape)


def _covered(a, b) -> float:
  """Intersection of boxes a and b (xyxy) over the smaller one's area."""
  inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
  return inter / min(area(a), area(b))


def visible_boxes(owner: np.ndarray, count: int) -> np.ndarray:
  """i32 [N] pixel boxes xyxy (end exclusive) of each shape's visible pixels.

  owner: i[S, S], the index of the shape drawn last at each pixel; any other
  value (generate's 255) where only background shows. A shape with no pixel
  showing gets an empty box (0, 0, 0, 0).
  """
  boxes = np.zeros((count, 4), np.int32)
  for k in range(count):
    ys, xs = np.nonzero(owner == k)
    if len(xs):
      boxes[k] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
  return boxes


def _draw(draw: ImageDraw.ImageDraw, label: int, box, colour) -> None:
  x0, y0, x1, y1 = box
  w, h = x1 - x0, y1 - y0
  name = CLASS_NAMES[label]
  if name == 'circle':
    draw.ellipse(box, fill=colour)
  elif name == 'square':
    draw.rectangle(box, fill=colour)
  elif name == 'triangle':
    draw.polygon([(x0 + w / 2, y0), (x1, y1), (x0, y1)], fill=colour)
  else:
    draw.rectangle((x0 + w / 3, y0, x1 - w / 3, y1), fill=colour)
    draw.rectangle((x0, y0 + h / 3, x1, y1 - h / 3), fill=colour)


def generate(seed: int, config: ShapesConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One example from its seed.

  Returns:
    image uint8 [S, S, 3]; boxes f32 [N, 4] normalised xyxy (the extent of each
    shape's visible pixels); labels i64 [N] in 0..len(CLASS_NAMES)-1.
  """
  rng = np.random.default_rng(seed)
  s = config.image_size
  canvas = Image.fromarray(np.clip(_background(rng, s), 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  owner = Image.new('L', (s, s), 255)  # index of the shape on top; 255: background
  draw_owner = ImageDraw.Draw(owner)
  boxes, labels = [], []
  for _ in range(rng.integers(1, config.max_objects + 1)):
    for _ in range(20):  # tries to place a shape that does not overlap too much
      w, h = rng.uniform(config.min_side, config.max_side) * rng.uniform(0.8, 1.25, 2)
      w, h = min(w, 0.95), min(h, 0.95)
      x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
      box = (x0, y0, x0 + w, y0 + h)
      if all(_covered(box, other) <= config.max_overlap for other in boxes):
        break
    else:
      continue
    label = int(rng.integers(len(CLASS_NAMES)))
    pixels = tuple(int(round(v * s)) for v in box)
    colour = tuple(int(c) for c in rng.integers(80, 256, 3))
    extent = (pixels[0], pixels[1], pixels[2] - 1, pixels[3] - 1)
    _draw(draw, label, extent, colour)
    _draw(draw_owner, label, extent, len(boxes))
    boxes.append(tuple(p / s for p in pixels))  # placement checks the drawn extent
    labels.append(label)
  visible = visible_boxes(np.asarray(owner), len(boxes))
  shown = visible[:, 2] > visible[:, 0]
  return (np.asarray(canvas), (visible[shown] / s).astype(np.float32).reshape(-1, 4),
          np.asarray(labels, np.int64)[shown])


class SsdShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on textured backgrounds, generated locally (see module docstring)."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': 'Stored as ArrayRecord, which the pipeline reads by index.',
                   '1.2.0': 'Boxes are the extent of the visible pixels of occluded shapes.'}
  BUILDER_CONFIGS = [
      ShapesConfig(name='default', description='4000 train / 500 test images, 128x128.'),
      ShapesConfig(name='small', description='64 train / 16 test images, for tests.',
                   num_train=64, num_test=16),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3), encoding_format='png'),
            'image/filename': tfds.features.Text(),
            'image/id': np.int64,
            'objects': tfds.features.Sequence({
                'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(names=CLASS_NAMES),
                'is_difficult': np.bool_,
            }),
        }),
        supervised_keys=None,
        homepage='https://github.com/ssd-jax/ssd_jax',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {'train': self._generate_examples(0, c.num_train),
            'test': self._generate_examples(1_000_000, c.num_test)}

  def _generate_examples(self, first_seed: int, count: int):
    for i in range(count):
      image, boxes, labels = generate(first_seed + i, self.builder_config)
      name = f'{first_seed + i:07d}.png'
      yield name, {
          'image': image, 'image/filename': name, 'image/id': first_seed + i,
          'objects': {'bbox': boxes[:, [1, 0, 3, 2]], 'label': labels,
                      'is_difficult': np.zeros(len(labels), bool)},
      }
