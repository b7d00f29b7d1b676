"""tf.data pipelines from TFDS: decoding, augmentation, padding, per-host shards.

Every example, after decoding, is a dict:
  image   uint8 [H, W, 3] RGB
  boxes   f32 [N, 4] normalised xyxy
  labels  i32 [N] model classes (dataset label + 1; 0 is background)
  difficult bool [N]  (VOC "difficult"; COCO "crowd")
Batches hold images f32 [b, S, S, 3] (mean subtracted), boxes f32 [b, M, 4],
labels i32 [b, M] padded with 0 (M = data.max_boxes), and for evaluation also
difficult, mask (real example or padding) and image_id. `b` is the host's
share of the global batch.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from ssd_jax import config_lib, labels, sharding
from ssd_jax.data import augment, custom_data, shapes_dataset

AUTOTUNE = tf.data.AUTOTUNE


def parse_split(spec: str) -> tuple[str, str]:
  """'voc/2007:train+validation' -> ('voc/2007', 'train+validation')."""
  name, sep, split = spec.partition(':')
  if not sep or not name or not split:
    raise ValueError(f'data split {spec!r} must look like "voc/2007:test" (name:split).')
  return name, split


def prepare_local(name: str, data_dir) -> None:
  """Generates a built-in dataset (`ssd_shapes`, no download) unless already on disk."""
  if name.split('/')[0] == shapes_dataset.NAME:
    tfds.builder(name, data_dir=data_dir).download_and_prepare()


def _load(spec: str, data_dir, process_index, process_count, shuffle):
  name, split = parse_split(spec)
  prepare_local(name, data_dir)
  split = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count)
  try:
    return tfds.load(name, split=split, data_dir=data_dir, shuffle_files=shuffle,
                     download=False)
  except (AssertionError, tfds.core.DatasetNotFoundError) as e:
    raise FileNotFoundError(
        f'TFDS dataset {name} was not found in data_dir={data_dir or "the TFDS default"}. '
        f'Prepare it once with: python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir={data_dir!r}).download_and_prepare()\" "
        f'(or set --config.data.data_dir to where it is). ({e})') from e


def _custom_records(config, spec: str) -> list:
  """Records of a custom split: VOC folder split name, or 'annotations.json:image_dir'."""
  d = config.data
  if d.root is None:
    raise ValueError(f'data.format={d.format!r} needs data.root, the dataset folder.')
  names = labels.class_names(config)
  if d.format == 'voc_folder':
    return custom_data.read_voc_folder(d.root, spec, names)
  annotations, sep, image_dir = spec.partition(':')
  if not sep:
    raise ValueError(f'coco_json split {spec!r} must be "annotations.json:image_dir" '
                     f'(paths relative to data.root).')
  return custom_data.read_coco_json(os.path.join(d.root, annotations),
                                    os.path.join(d.root, image_dir), d.class_names or None)


def _examples(config, spec: str, index: int, count: int,
              shuffle: bool) -> tuple[tf.data.Dataset, int]:
  """Decoded examples (see module docstring) of this host's share of a split,
  and the number of examples in the whole split (all hosts)."""
  fmt = config.data.format
  if fmt == 'tfds':
    ds = _load(spec, config.data.data_dir, index, count, shuffle)
    total = int(_load(spec, config.data.data_dir, 0, 1, False).cardinality())
    return ds.map(decode, num_parallel_calls=AUTOTUNE), total
  if fmt in ('voc_folder', 'coco_json'):
    records = _custom_records(config, spec)
    ds = custom_data.records_dataset(records[index::count],
                                     config.seed + index if shuffle else None)
    return ds, len(records)
  raise ValueError(f'data.format={fmt!r} is not one of {config_lib.DATA_FORMATS}.')


def decode(example) -> dict:
  """A TFDS voc/coco example -> the common dict (see module docstring).

  Object fields are cut to their common length (real data has equal lengths;
  mock data may not), boxes of zero area are dropped.
  """
  objects = example['objects']
  flags = objects['is_difficult'] if 'is_difficult' in objects else objects['is_crowd']
  n = tf.reduce_min([tf.shape(objects['bbox'])[0], tf.shape(objects['label'])[0],
                     tf.shape(flags)[0]])
  yxyx = tf.reshape(objects['bbox'][:n], [-1, 4])
  boxes = tf.stack([yxyx[:, 1], yxyx[:, 0], yxyx[:, 3], yxyx[:, 2]], -1)
  labels = tf.cast(objects['label'][:n], tf.int32) + 1
  boxes, labels, difficult = augment.drop_degenerate(boxes, labels, flags[:n])
  image = example['image']
  image_id = example.get('image/id', tf.strings.to_hash_bucket_fast(
      example.get('image/filename', tf.constant('')), 2**62))
  return {'image': image, 'boxes': boxes, 'labels': labels, 'difficult': difficult,
          'image_id': tf.cast(image_id, tf.int64)}


def _pad(x, size: int):
  """Pads or cuts axis 0 to `size` with zeros."""
  x = x[:size]
  paddings = [[0, size - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
  return tf.ensure_shape(tf.pad(x, paddings), [size] + x.shape[1:])


def finish(image, image_size: int, mean_rgb):
  """Resize to the network input and subtract the mean pixel."""
  image = tf.image.resize(image, (image_size, image_size), method='bilinear')
  return image - tf.constant(mean_rgb, tf.float32)


def shrink(image, max_side: int):
  """Downscale (keeping the aspect ratio) so the longer side is at most max_side.

  Zoom-out makes a canvas up to 4x the side: a 3000-pixel photo would need
  gigabytes. Boxes are normalised, so they are unaffected.
  """
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.minimum(1.0, max_side / tf.reduce_max(shape))
  return tf.cond(scale < 1.0,
                 lambda: tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32)),
                 lambda: image)


def train_preprocess(features, seed, config) -> dict:
  """One training example: augment, resize, subtract the mean, pad the boxes."""
  image = shrink(tf.cast(features['image'], tf.float32), config.data.max_image_side)
  boxes, labels = features['boxes'], features['labels']
  if config.augment.enabled:
    image, boxes, labels = augment.train_augment(image, boxes, labels, seed, config.augment,
                                                 config.data.mean_rgb)
  m = config.data.max_boxes
  return {'image': finish(image, config.model.image_size, config.data.mean_rgb),
          'boxes': _pad(boxes, m), 'labels': _pad(labels, m)}


def eval_preprocess(features, config) -> dict:
  """One evaluation example: resize, subtract the mean, pad; mask = True."""
  m = config.data.max_boxes
  image = tf.cast(features['image'], tf.float32)
  return {'image': finish(image, config.model.image_size, config.data.mean_rgb),
          'boxes': _pad(features['boxes'], m), 'labels': _pad(features['labels'], m),
          'difficult': _pad(features['difficult'], m), 'image_id': features['image_id'],
          'original_size': tf.shape(features['image'])[:2], 'mask': tf.constant(True)}


def _processes(process_index, process_count):
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def train_dataset(config, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, start_step: int = 0) -> tf.data.Dataset:
  """Endless shuffled, augmented batches of this host's share of the train splits.

  `start_step` resumes the stream exactly where a run that took that many steps
  left it: the skipped examples are read but not augmented (seeds follow the
  example's position, so what follows is identical).
  """
  index, count = _processes(process_index, process_count)
  batch = sharding.check_batch(config.train.batch_size, num_hosts=count)
  parts = [_examples(config, s, index, count, True)[0] for s in config.data.train_splits]
  ds = parts[0]
  for part in parts[1:]:
    ds = ds.concatenate(part)
  ds = ds.repeat()
  ds = ds.shuffle(config.data.shuffle_buffer, seed=config.seed + index)
  host_seed = tf.constant([config.seed, index], tf.int64)
  ds = ds.enumerate().skip(start_step * batch).map(
      lambda i, ex: train_preprocess(ex, tf.random.experimental.stateless_fold_in(host_seed, i),
                                     config),
      num_parallel_calls=AUTOTUNE)
  return ds.batch(batch, drop_remainder=True).prefetch(AUTOTUNE)


def decoded_eval_examples(config, count: int) -> tf.data.Dataset:
  """The first `count` examples of the eval split, decoded but not resized
  (see the module docstring), for drawing detections on."""
  return _examples(config, config.data.eval_split, 0, 1, False)[0].take(count)


def _padding_example(config) -> dict:
  s, m = config.model.image_size, config.data.max_boxes
  return {'image': tf.zeros([s, s, 3]), 'boxes': tf.zeros([m, 4]),
          'labels': tf.zeros([m], tf.int32), 'difficult': tf.zeros([m], tf.bool),
          'image_id': tf.constant(-1, tf.int64), 'original_size': tf.zeros([2], tf.int32),
          'mask': tf.constant(False)}


def eval_dataset(config, process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> tuple[tf.data.Dataset, int]:
  """This host's share of the eval split, padded so all hosts run the same steps.

  Returns:
    (dataset of batches, number of batches), the same number on every host;
    padding examples have mask False.
  """
  index, count = _processes(process_index, process_count)
  batch = sharding.check_batch(config.train.batch_size, num_hosts=count)
  ds, total = _examples(config, config.data.eval_split, index, count, False)
  steps = math.ceil(math.ceil(total / count) / batch)
  ds = ds.map(lambda ex: eval_preprocess(ex, config), num_parallel_calls=AUTOTUNE)
  padding = tf.data.Dataset.from_tensors(_padding_example(config)).repeat()
  ds = ds.concatenate(padding).take(steps * batch)
  return ds.batch(batch, drop_remainder=True).prefetch(AUTOTUNE), steps
