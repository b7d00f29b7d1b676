"""Small data that tests and benchmarks make: VOC folders and batches of coloured squares."""
import pathlib

import numpy as np
from PIL import Image

SQUARE_CLASSES = ('red', 'green')
_COLOURS = {'red': (230, 20, 20), 'green': (20, 230, 20)}
# data.pixel_buffer for the squares' 96-pixel images (a config's 512 or 640 only
# makes the train step bigger, and makes one model's step differ between VOC and
# COCO configs, so that each compiles its own).
SQUARES_PIXEL_BUFFER = 128

VOC_XML = """<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
VOC_OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def write_voc_folder(root: pathlib.Path, images, split='trainval'):
  """images: list of (id, PIL image or raw bytes, [(name, difficult, x0, y0, x1, y1)]);
  JPEG quality 90 (PNG for grayscale and RGBA)."""
  for sub in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
    (root / sub).mkdir(parents=True, exist_ok=True)
  for image_id, content, objects in images:
    path = root / 'JPEGImages' / f'{image_id}.jpg'
    if isinstance(content, bytes):
      path.write_bytes(content)
      w, h = 40, 30
    else:
      content.save(path, format='PNG' if content.mode in ('RGBA', 'L') else 'JPEG',
                   quality=90)
      w, h = content.size
    xml_objects = ''.join(VOC_OBJECT.format(name=n, difficult=int(d), x0=x0, y0=y0, x1=x1, y1=y1)
                          for n, d, x0, y0, x1, y1 in objects)
    (root / 'Annotations' / f'{image_id}.xml').write_text(
        VOC_XML.format(w=w, h=h, objects=xml_objects))
  (root / 'ImageSets' / 'Main' / f'{split}.txt').write_text(
      ''.join(f'{i}\n' for i, _, _ in images))


def squares_voc_folder(root: pathlib.Path, n: int, size=96, seed=0):
  """n grey JPEG images with 1-2 red or green squares each, classes SQUARE_CLASSES."""
  rng = np.random.default_rng(seed)
  images = []
  for i in range(n):
    pixels = np.full((size, size, 3), 128, np.uint8)
    objects = []
    for _ in range(rng.integers(1, 3)):
      side = int(rng.integers(size // 6, size // 2))
      x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
      name = SQUARE_CLASSES[rng.integers(0, 2)]
      pixels[y0:y0 + side, x0:x0 + side] = _COLOURS[name]
      objects.append((name, False, x0 + 1, y0 + 1, x0 + side, y0 + side))  # VOC is 1-based
    images.append((f'{i:04d}', Image.fromarray(pixels), objects))
  write_voc_folder(root, images)


def squares_folder_overrides(folder: pathlib.Path) -> list[str]:
  """Writes 8 images of red and green squares as a VOC folder under `folder` and
  returns the --config overrides that train and evaluate on it: its class names
  (the class count follows them; results number them 1, 2) and
  SQUARES_PIXEL_BUFFER."""
  squares_voc_folder(folder / 'squares', 8)
  return ['--config.data.format=voc_folder', f'--config.data.root={folder / "squares"}',
          '--config.data.train_splits=("trainval",)', '--config.data.eval_split=trainval',
          '--config.data.class_names=("red","green")', '--config.model.num_classes=None',
          '--config.data.category_ids=None', f'--config.data.pixel_buffer={SQUARES_PIXEL_BUFFER}']


def tiny_config(config):
  """A small SSD at 96x96 with four sources, for fast steps on CPU."""
  c = config
  c.model.image_size, c.model.width, c.model.num_classes = 96, 0.125, 3
  c.model.sources = ('conv4_3', 'conv7', 'conv8_2', 'conv9_2')
  c.anchors.min_sizes = c.anchors.max_sizes = c.anchors.steps = None
  c.anchors.aspect_ratios = ((2,), (2, 3), (2, 3), (2,))
  c.data.max_boxes, c.data.pixel_buffer = 3, SQUARES_PIXEL_BUFFER
  c.train.batch_size = 8
  c.optim.warmup_steps = 1
  return c


def squares_config(config, root, num_steps):
  """tiny_config training on a squares_voc_folder at `root` (its trainval split
  also serves as the eval split)."""
  c = tiny_config(config)
  c.data.format, c.data.root, c.data.class_names = 'voc_folder', root, SQUARE_CLASSES
  c.data.train_splits, c.data.eval_split = ('trainval',), 'trainval'
  c.train.num_steps, c.train.checkpoint_every, c.train.log_every = num_steps, 2, 1
  c.optim.learning_rate, c.optim.grad_clip_norm = 0.01, 10.0
  return c


def init_params(config, rng) -> dict:
  """The parameters of builders.init_variables (no BatchNorm statistics), jitted:
  run op by op, the initialisation dispatches and compiles each of its hundreds
  of operations on its own."""
  import jax
  from ssd_jax import builders
  return jax.jit(lambda key: builders.init_variables(config, key)['params'])(rng)


def random_variables(config, seed: int = 0) -> dict:
  """Variables of the config's model drawn with NumPy (no compile): He-normal
  kernels (activations stay O(1), so class scores spread rather than sit at
  1/C as at initialisation), every BatchNorm's scale, offset, mean and
  variance random; biases N(0, 0.1)."""
  import flax
  import jax
  from ssd_jax import builders
  shapes = flax.traverse_util.flatten_dict(jax.eval_shape(
      lambda: builders.init_variables(config, jax.random.key(0))))
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    if path[-1] == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
    if path[-1] == 'var':
      return rng.uniform(0.5, 2.0, shape)
    if path[-1] == 'scale':
      return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0, 0.1, shape)  # biases, offsets, means

  return flax.traverse_util.unflatten_dict(
      {k: draw(k, s.shape).astype(np.float32) for k, s in shapes.items()})


def synthetic_batch(rng, batch, size=96, max_boxes=3):
  """A training batch: grey uint8 images with red (class 1) and green (class 2) squares."""
  images = np.full((batch, size, size, 3), 128, np.uint8)
  boxes = np.zeros((batch, max_boxes, 4), np.float32)
  labels = np.zeros((batch, max_boxes), np.int32)
  for b in range(batch):
    for k in range(rng.integers(1, max_boxes + 1)):
      side = rng.integers(16, 48)
      x0, y0 = rng.integers(0, size - side, 2)
      cls = rng.integers(1, 3)
      images[b, y0:y0 + side, x0:x0 + side] = (230, 20, 20) if cls == 1 else (20, 230, 20)
      boxes[b, k] = np.array([x0, y0, x0 + side, y0 + side]) / size
      labels[b, k] = cls
  return {'image': images, 'boxes': boxes, 'labels': labels}


PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field',
          'immunohistochemistry', 'retina')


def sample_photos() -> list[np.ndarray]:
  """scikit-image's bundled colour photographs, uint8 [H, W, 3] (no download)."""
  import skimage.data
  return [getattr(skimage.data, name)() for name in PHOTOS]


def photo_voc_folder(root: pathlib.Path, n: int, seed: int = 0, size=(500, 375),
                     class_names=('thing',), split: str = 'trainval') -> list[str]:
  """n JPEGs (quality 90) cut from sample_photos and resized to `size` (w, h), VOC's
  typical size, each with 1-6 random boxes; a Pascal VOC folder under root.

  Returns the image ids.
  """
  rng = np.random.default_rng(seed)
  photos, w, h = sample_photos(), size[0], size[1]
  images = []
  for i in range(n):
    photo = photos[i % len(photos)]
    ph, pw = photo.shape[:2]
    cut_w = int(rng.uniform(0.6, 1.0) * pw)
    cut_h = min(ph, int(cut_w * h / w))
    x0, y0 = int(rng.integers(0, pw - cut_w + 1)), int(rng.integers(0, ph - cut_h + 1))
    image = Image.fromarray(photo[y0:y0 + cut_h, x0:x0 + cut_w]).resize((w, h), Image.BILINEAR)
    objects = []
    for _ in range(rng.integers(1, 7)):
      bw, bh = int(rng.integers(20, w // 2)), int(rng.integers(20, h // 2))
      bx, by = int(rng.integers(1, w - bw)), int(rng.integers(1, h - bh))
      objects.append((class_names[rng.integers(len(class_names))], False, bx, by, bx + bw,
                      by + bh))
    images.append((f'{i:06d}', image, objects))
  write_voc_folder(root, images, split)
  return [i for i, _, _ in images]


def finish_image(buffer, pixels_size, place, method, size: int, mean_rgb, colour=None,
                 flip=False) -> np.ndarray:
  """One image's pixels.finish (u8 [P, Q, 3] buffer, its content's (h, w), place
  y0, x0, y1, x1, a pixels.RESIZE_METHODS index, the colour draws (None: none),
  mirrored or not) -> f32 [size, size, 3] whole pixel values."""
  from ssd_jax import pixels
  colour = np.zeros(len(pixels.COLOUR_FIELDS)) if colour is None else colour
  batch = {'pixels': buffer, 'pixels_size': pixels_size, 'place': place, 'method': method,
           'colour': np.asarray(colour, np.float32), 'flip': flip}
  batch = {k: np.asarray(v)[None] for k, v in batch.items()}
  return np.asarray(pixels.finish_compiled(batch, size, mean_rgb))[0]
