"""tf.data input pipelines: examples read by position, augmented, batched per host.

Order. Training reads the union of data.train_splits (VOC07+12 as one set of
N examples) in an order that is a pure function of (seed, pass, position):
global position g is example `index_shuffle(g mod N)` under the permutation of
pass g div N, drawn anew for each pass. Global batch b holds positions
[bB, (b+1)B); host h reads its slice [bB + h b_h, bB + (h+1) b_h) and nothing
else. Resuming at step s starts at position sB: no record before it is read,
and the batches equal those of an uninterrupted run. Each example's
augmentation seed is folded from (seed, g), so it does not depend on where a
run started or on the number of hosts either.

Batches (b = this host's share of train.batch_size, S = model.image_size):
  training:   the decoded crop of each image and what finishes it on the
              device (pixels u8 [b, P, P, 3], P = data.pixel_buffer, and the
              rest of pixels.FINISH_FIELDS: the train step makes the S x S
              images); boxes f32 [b, M, 4] normalised xyxy on the finished
              image; labels i32 [b, M] (0 = padding), M = data.max_boxes;
              train_dataset also yields num_boxes i32 [b] (before padding) and
              name (file names), which train_batches checks and strips.
  evaluation: image f32 [b, S, S, 3] RGB pixels (bilinear resize); mask bool
              [b] (a real, readable example); image_id i64 [b]; original_size
              i32 [b, 2]; and the whole ground truth, never cut: boxes f32
              [b, n, 4] normalised xyxy, labels i32 [b, n] (0 = padding),
              difficult bool [b, n], n the most boxes of any image in the batch.
The mean pixel is subtracted on device (builders.normalise_images).
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Optional

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from ssd_jax import config_lib, pixels, sharding
from ssd_jax.data import augment, custom_data, sources, tfds_data

AUTOTUNE = tf.data.AUTOTUNE
# Examples decoded and augmented at once: one per schedulable core.
PARALLEL_CALLS = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (
    os.cpu_count() or 1)
# Salts separating the seed streams derived from config.seed.
_ORDER, _AUGMENT = 0x0D3, 0xA06


def _custom_records(config, spec: str) -> list:
  """Records of a custom split: a VOC folder's split name, a YOLO YAML's split key,
  or 'annotations.json:image_dir'."""
  d = config.data
  if d.root is None:
    raise ValueError(f'data.format={d.format!r} needs data.root, the dataset folder.')
  if d.format == 'yolo':
    return custom_data.read_yolo(d.root, spec, d.class_names)
  if d.format == 'coco_json':
    annotations, sep, image_dir = spec.partition(':')
    if not sep:
      raise ValueError(f'coco_json split {spec!r} must be "annotations.json:image_dir" '
                       f'(paths relative to data.root).')
    return custom_data.read_coco_json(os.path.join(d.root, annotations),
                                      os.path.join(d.root, image_dir), d.class_names or None)
  if not d.class_names:
    raise ValueError("data.format='voc_folder' with no data.class_names: build the config's "
                     "task (ssd_jax.task.Task.of), which takes data.name's label map, or set "
                     "them (--config.data.class_names='(\"cat\",\"dog\")').")
  return custom_data.read_voc_folder(d.root, spec, d.class_names, config.seed,
                                     d.val_fraction, d.split_file)


def open_source(config, spec: str) -> sources.Source:
  """The source of one split of the configured data.format (all hosts see all of it)."""
  fmt = config.data.format
  if fmt == 'tfds':
    try:
      return sources.TfdsSource(spec, config.data.data_dir)
    except tfds_data.UnknownSplit as e:  # say which field to fix
      field = 'data.eval_split' if spec == config.data.eval_split else 'data.train_splits'
      raise tfds_data.UnknownSplit(f'{field} names {spec!r}: {e}') from e
  if fmt in ('voc_folder', 'yolo', 'coco_json'):
    return sources.RecordsSource(_custom_records(config, spec), spec)
  raise ValueError(f'data.format={fmt!r} is not one of {config_lib.DATA_FORMATS}.')


def _pad(x, size: int):
  """Pads or cuts axis 0 to `size` with zeros."""
  x = x[:size]
  paddings = [[0, size - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
  return tf.ensure_shape(tf.pad(x, paddings), [size] + x.shape[1:])


def _traced(fn):
  """`fn` for tf.data's map as written, not rewritten by AutoGraph: the example
  functions branch only on the config, and use tf.cond and tf.while_loop where a
  tensor decides. AutoGraph's rewrite of them took 3.8 s of a run's start here."""
  return tf.autograph.experimental.do_not_convert(fn)


def _processes(process_index, process_count):
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def host_positions(first: int, host_batch: int, global_batch: int,
                   host: int) -> tf.data.Dataset:
  """int64 global positions of this host's examples, from its `first` one on:
  the j-th is (j div b) B + h b + (j mod b)."""
  def position(j):
    return (j // host_batch) * global_batch + host * host_batch + j % host_batch
  return tf.data.Dataset.range(first, 2**62).map(_traced(position))


def record_at(position, num_records: int, seed: int):
  """The example index at a global training position: pass position div N is a
  permutation of [0, N) seeded by (seed, pass)."""
  n = tf.constant(num_records, tf.int64)
  pass_seed = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, _ORDER], tf.int64), position // n)
  return tf.random.experimental.index_shuffle(position % n, pass_seed, n - 1)


def train_example(source: sources.Source, position, config) -> dict:
  """The training example at a global position (see module docstring), ready for
  the device to finish (pixels.FINISH_FIELDS) with its final boxes and labels."""
  ex = source.example(record_at(position, len(source), config.seed), decode=False)
  boxes, classes = tf.cond(ex['ok'], lambda: (ex['boxes'], ex['labels']),
                           lambda: (tf.zeros([0, 4]), tf.zeros([0], tf.int32)))
  size, m = config.model.image_size, config.data.max_boxes
  shape = sources.image_shape(ex)
  height, width = tf.unstack(shape)
  if config.augment.enabled:
    seed = tf.random.experimental.stateless_fold_in(
        tf.constant([config.seed, _AUGMENT], tf.int64), position)
    crop, finish, boxes, classes, _ = augment.train_augment(height, width, boxes, classes, seed,
                                                            config.augment, size)
  else:
    crop, finish = augment.resize_only(height, width, size)
  buffer, buffer_size = augment.to_buffer(sources.decode_crop(ex, crop, shape), crop,
                                          finish['place'], config.data.pixel_buffer,
                                          finish['method'])
  return {**finish, 'pixels': buffer, 'pixels_size': buffer_size, 'boxes': _pad(boxes, m),
          'labels': _pad(classes, m), 'num_boxes': tf.shape(classes)[0], 'name': ex['name']}


def prepare_data(config) -> None:
  """Generates the built-in TFDS datasets that the config's splits name, unless
  on disk (one process at a time: see tfds_data). On several hosts, training
  calls it on host 0 before any host opens its data."""
  if config.data.format != 'tfds':
    return  # custom data is read where it is (a voc_folder's split file: same bytes on each host)
  for spec in (*config.data.train_splits, config.data.eval_split):
    tfds_data.prepare_built_in(sources.parse_split(spec)[0], config.data.data_dir)


def train_source(config) -> sources.Source:
  """The union of data.train_splits, opened (errors now, before any batch)."""
  source = sources.Union([open_source(config, s) for s in config.data.train_splits])
  if not len(source):
    raise ValueError(f'the training splits {source.description} hold no example.')
  return source


def _without_autotuning(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Every pipeline here runs without tf.data's autotuning model. Destroying an
  iterator waits for that model's thread, which sleeps up to a minute between
  rounds: the end of a run stalled 54 s (the quickstart) and 13-30 s per host
  (two- and four-host runs) with it. Without it the maps run PARALLEL_CALLS at
  once, and on the quickstart's data the training stream gave 1082-1322
  images/s at 1.5-1.8 ms CPU each against 913-1063 and 1.8-2.0 with it."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


def train_dataset(config, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, start_step: int = 0,
                  source: Optional[sources.Source] = None) -> tf.data.Dataset:
  """Endless batches of this host's share of the training order (module docstring),
  from step `start_step` on; no record before it is read. `source`: the
  train_source(config) when already opened. The batch is checked to divide over
  the hosts (sharding.check_batch); see host_train_dataset."""
  index, count = _processes(process_index, process_count)
  batch = sharding.check_batch(config.train.batch_size, num_hosts=count)
  return host_train_dataset(config, source or train_source(config), index, batch, start_step)


def host_train_dataset(config, source: sources.Source, host: int, host_batch: int,
                       start_step: int = 0) -> tf.data.Dataset:
  """train_dataset of host `host` whose share of train.batch_size is `host_batch`,
  as the caller checked it (sharding.check_mesh_batch), from the opened `source`."""
  positions = host_positions(start_step * host_batch, host_batch, config.train.batch_size, host)
  ds = positions.map(_traced(lambda g: train_example(source, g, config)),
                     num_parallel_calls=PARALLEL_CALLS)
  shapes = {k: spec.shape for k, spec in ds.element_spec.items()}
  p = config.data.pixel_buffer
  shapes['pixels'] = [p, p, 3]  # each crop at the top left of its buffer, zeros beyond
  return _without_autotuning(ds.padded_batch(host_batch, shapes, drop_remainder=True)
                             .prefetch(AUTOTUNE))


def train_batches(config, start_step: int = 0,
                  source: Optional[sources.Source] = None) -> Iterator[dict]:
  """This host's training batches as NumPy (image, boxes, labels) from `start_step`.

  Warns once per image when an augmented image holds more than data.max_boxes
  boxes (the rest are not trained on). Like every stream of this module, it
  may be left open at the interpreter's exit (see sources.PythonCalls).
  """
  ds = train_dataset(config, start_step=start_step, source=source)  # errors now, not later
  return _checked_batches(ds, config)


def host_train_batches(config, source: sources.Source, host: int, host_batch: int,
                       start_step: int = 0) -> Iterator[dict]:
  """train_batches from host_train_dataset (the batch checked by the caller)."""
  return _checked_batches(host_train_dataset(config, source, host, host_batch, start_step),
                          config)


def _checked_batches(ds: tf.data.Dataset, config) -> Iterator[dict]:
  warned = set()
  for batch in ds.as_numpy_iterator():
    for name, n in zip(batch.pop('name'), batch.pop('num_boxes')):
      if n > config.data.max_boxes and name not in warned:
        warned.add(name)
        logging.warning('image %s has %d boxes after augmentation; only data.max_boxes=%d are '
                        'trained on. Raise data.max_boxes to keep them all.', name.decode(), n,
                        config.data.max_boxes)
    yield batch


def eval_example(source: sources.Source, position, config) -> dict:
  """The example at an evaluation position, resized; positions past the end
  repeat the last example with mask False."""
  n = len(source)
  ex = source.example(tf.minimum(position, n - 1))
  size = config.model.image_size
  image = tf.image.resize(tf.cast(ex['image'], tf.float32), (size, size), 'bilinear')
  return {'image': image, 'mask': (position < n) & ex['ok'], 'image_id': ex['image_id'],
          'original_size': tf.shape(ex['image'])[:2], 'boxes': ex['boxes'],
          'labels': ex['labels'], 'difficult': ex['difficult']}


def eval_source(config) -> sources.Source:
  """data.eval_split, opened (errors now, before any batch)."""
  source = open_source(config, config.data.eval_split)
  if not len(source):
    raise ValueError(f'the eval split {source.description} holds no example.')
  return source


def opened(open_split, config, why: str) -> sources.Source:
  """open_split(config) (train_source or eval_source); an error opening it is
  raised again as FileNotFoundError (a missing dataset) or ValueError, its
  message followed by `why`: what the caller reads the split for, and how to do
  without it."""
  try:
    return open_split(config)
  except (OSError, ValueError) as e:
    kind = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
    raise kind(f'{e} ({why})') from e


def eval_dataset(config, process_index: Optional[int] = None,
                 process_count: Optional[int] = None,
                 source: Optional[sources.Source] = None) -> tuple[tf.data.Dataset, int]:
  """This host's share of the eval split, in order, padded so all hosts run the same steps.
  `source`: the eval_source(config) when already opened. The batch is checked
  to divide over the hosts (sharding.check_batch); see host_eval_dataset.

  Returns:
    (dataset of batches, number of batches), the same number on every host;
    padding examples have mask False.
  """
  index, count = _processes(process_index, process_count)
  batch = sharding.check_batch(config.train.batch_size, num_hosts=count)
  return host_eval_dataset(config, source or eval_source(config), index, batch)


def host_eval_dataset(config, source: sources.Source, host: int,
                      host_batch: int) -> tuple[tf.data.Dataset, int]:
  """eval_dataset of host `host` whose share of train.batch_size is `host_batch`,
  as the caller checked it (sharding.check_mesh_batch), from the opened `source`."""
  steps = math.ceil(len(source) / config.train.batch_size)
  positions = host_positions(0, host_batch, config.train.batch_size, host).take(
      steps * host_batch)
  ds = positions.map(_traced(lambda g: eval_example(source, g, config)),
                     num_parallel_calls=PARALLEL_CALLS)
  return (_without_autotuning(ds.padded_batch(host_batch, drop_remainder=True)
                              .prefetch(AUTOTUNE)), steps)


def decoded_eval_examples(config, count: Optional[int] = None,
                          source: Optional[sources.Source] = None) -> tf.data.Dataset:
  """The first `count` examples of the eval split (all when None), decoded but
  not resized (see sources.py), for drawing detections on or scoring a Detector.
  `source`: the eval_source(config) when already opened."""
  source = source or open_source(config, config.data.eval_split)
  count = len(source) if count is None else min(count, len(source))
  return decoded_examples(source, range(count))


def decoded_examples(source: sources.Source, indices) -> tf.data.Dataset:
  """The examples of `source` at `indices` (ints), in that order, decoded but not
  resized (see sources.py)."""
  index = tf.data.Dataset.from_tensor_slices(np.asarray(list(indices), np.int64))
  return _without_autotuning(index.map(_traced(source.example)))
