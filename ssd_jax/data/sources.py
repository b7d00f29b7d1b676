"""Random-access example sources: TFDS splits (ArrayRecord) and custom datasets.

The input pipeline reads examples by index, so that the training order is a
pure function of (seed, pass, position) and a resumed run reads nothing it
does not use. A source is a length and a TensorFlow function from an int64
index to one decoded example:
  image      uint8 [H, W, 3] RGB
  boxes      f32 [N, 4] normalised xyxy
  labels     i32 [N] model classes (dataset label + 1; 0 is background)
  difficult  bool [N] (VOC "difficult"; COCO "crowd")
  image_id   int64
  name       string: the image's file name, for messages
  ok         bool: False when the image could not be decoded (then a 1 x 1
             black image; training gives it no boxes, evaluation skips it)
Encoded bytes are read by index and decoded only when an example is used.
`example(index, decode=False)` may leave the decoding to its user: such an
example also holds `encoded` (string; see left_encoded), and `image_shape` and
`decode_crop` read it (a JPEG: its header, then only the crop's pixels).

Reading calls Python from tf.data's threads (tf.numpy_function): every such
call goes through `python_call`, which the interpreter's exit closes (see
PythonCalls), so a stream left open however it was driven never hangs exit.
"""
from __future__ import annotations

import atexit
import functools
import threading
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from ssd_jax import images
from ssd_jax.data import augment, tfds_data


class PythonCalls:
  """The gate of every Python call made from tf.data's threads.

  Why: a tf.data iterator still alive when the interpreter finalises (a
  script's `it = iter(ds)`) is destroyed then, and waits for its worker
  threads; a worker that calls into Python at that moment can never take the
  interpreter again, so the process hangs. `close()` runs when the interpreter
  starts to exit, before finalisation: it waits for the calls in flight, and
  every later call returns its caller's stand-in value at once without
  running, so the workers soon fill their buffers and wait outside Python
  when the iterators go.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._in_flight = 0
    self._last_call = 0.0
    self.closed = False

  def call(self, fn, stand_in, *args):
    with self._lock:
      if self.closed:
        return stand_in
      self._in_flight += 1
      self._last_call = time.monotonic()
    try:
      return fn(*args)
    finally:
      with self._lock:
        self._in_flight -= 1

  def close(self, quiet_s: float = 0.2, timeout_s: float = 30.0) -> None:
    """Refuses new calls; returns once none has run for `quiet_s` (at most `timeout_s`)."""
    with self._lock:
      self.closed = True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      with self._lock:
        idle = self._in_flight == 0 and time.monotonic() - self._last_call > quiet_s
      if idle:
        return
      time.sleep(0.02)


PYTHON_CALLS = PythonCalls()
atexit.register(PYTHON_CALLS.close)


def python_call(fn, inputs, Tout, stand_in):
  """tf.numpy_function(fn, inputs, Tout) through the exit gate (PythonCalls);
  `stand_in` (a valid output of fn) is returned instead once the interpreter exits."""
  return tf.numpy_function(functools.partial(PYTHON_CALLS.call, fn, stand_in), inputs, Tout,
                           stateful=False)


class Source:
  """A sequence of examples readable by index inside tf.data (see module docstring)."""

  description: str

  def __len__(self) -> int:
    raise NotImplementedError

  def example(self, index: tf.Tensor, decode: bool = True) -> dict:
    raise NotImplementedError


def _decode_whole(encoded):
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def left_encoded(encoded) -> dict:
  """The pixels of an example left to its user: a JPEG stays encoded (its
  'image' empty: decode_crop decodes only the crop); any other format is
  decoded once, here."""
  return {'encoded': encoded, 'image': tf.cond(
      tf.io.is_jpeg(encoded), lambda: tf.zeros([0, 0, 3], tf.uint8),
      lambda: _decode_whole(encoded))}


def image_shape(ex: dict):
  """i32 [2] height, width of an example's image, decoded or not (a JPEG's from its header)."""
  if 'encoded' not in ex:
    return tf.shape(ex['image'])[:2]
  return tf.cond(tf.io.is_jpeg(ex['encoded']),
                 lambda: tf.image.extract_jpeg_shape(ex['encoded'])[:2],
                 lambda: tf.shape(ex['image'])[:2])


def decode_crop(ex: dict, crop, shape):
  """u8 [h, w, 3]: the pixels rows [y0, y1), columns [x0, x1) of an example's image
  (crop i32 [4] y0, x0, y1, x1 inside it; shape: image_shape(ex)); a JPEG left
  encoded decodes only those. An empty crop gives one pixel (its caller knows
  it is empty)."""
  start = tf.minimum(crop[:2], tf.maximum(shape - 1, 0))
  size = tf.minimum(tf.maximum(crop[2:] - start, 1), shape - start)
  cut = lambda image: image[start[0]:start[0] + size[0], start[1]:start[1] + size[1]]  # noqa: E731
  if 'encoded' not in ex:
    return cut(ex['image'])
  return tf.cond(
      tf.io.is_jpeg(ex['encoded']),
      lambda: tf.image.decode_and_crop_jpeg(ex['encoded'], tf.concat([start, size], 0),
                                            channels=3),
      lambda: cut(ex['image']))


def parse_split(spec: str) -> tuple[str, str]:
  """'voc/2007:train+validation' -> ('voc/2007', 'train+validation')."""
  name, sep, split = spec.partition(':')
  if not sep or not name or not split:
    raise ValueError(f'data split {spec!r} must look like "voc/2007:test" (name:split).')
  return name, split


class TfdsSource(Source):
  """A TFDS split in VOC's or COCO's feature layout, read by index from ArrayRecord files
  (opened, and a built-in dataset generated once, by tfds_data.open_data_source)."""

  def __init__(self, spec: str, data_dir: Optional[str]):
    name, split = parse_split(spec)
    self._data, self._features = tfds_data.open_data_source(name, split, data_dir)
    self._stand_in = self._data[0] if len(self._data) else b''  # see PythonCalls
    self.description = spec

  def __len__(self) -> int:
    return len(self._data)

  def _read(self, index) -> bytes:
    return self._data[int(index)]

  def example(self, index, decode: bool = True):
    raw = python_call(self._read, [index], tf.string, self._stand_in)
    ex = self._features.deserialize_example(raw, decoders={'image': tfds.decode.SkipDecoding()})
    objects = ex['objects']
    flags = objects['is_difficult'] if 'is_difficult' in objects else objects['is_crowd']
    yxyx = tf.reshape(objects['bbox'], [-1, 4])
    boxes = tf.stack([yxyx[:, 1], yxyx[:, 0], yxyx[:, 3], yxyx[:, 2]], -1)
    labels = tf.cast(objects['label'], tf.int32) + 1
    boxes, labels, difficult = augment.drop_degenerate(boxes, labels, tf.cast(flags, tf.bool))
    name = ex.get('image/filename', tf.constant(''))
    image_id = ex.get('image/id', tf.strings.to_hash_bucket_fast(name, 2**62))
    pixels = {'image': _decode_whole(ex['image'])} if decode else left_encoded(ex['image'])
    return {**pixels, 'boxes': boxes, 'labels': labels, 'difficult': difficult,
            'image_id': tf.cast(image_id, tf.int64), 'name': name, 'ok': tf.constant(True)}


class _OnceLog:
  """Logs an unreadable image once per file however many passes read it."""

  def __init__(self):
    self._seen, self._lock = set(), threading.Lock()

  def error(self, path: str, message: str) -> None:
    with self._lock:
      if path in self._seen:
        return
      self._seen.add(path)
    logging.error('skipping unreadable image (logged once): %s', message)


_UNREADABLE = _OnceLog()


_NO_IMAGE = (np.zeros((1, 1, 3), np.uint8), np.bool_(False))


def _decode_file(path) -> tuple[np.ndarray, bool]:
  """PIL decoding (images.read_image) for tf.numpy_function: (u8 [H, W, 3], ok).

  `path`: bytes (in tf.data) or a 0-d object array of bytes (eager calls).
  """
  path = np.asarray(path).item().decode()
  try:
    return images.read_image(path), True
  except ValueError as e:
    _UNREADABLE.error(path, str(e))
    return _NO_IMAGE


class RecordsSource(Source):
  """Custom data (custom_data.Record: a VOC folder or a COCO JSON), images decoded by PIL."""

  def __init__(self, records: Sequence, description: str):
    self._n = len(records)
    self._paths = tf.constant([r.path for r in records] or [''])
    self._ids = tf.constant([r.image_id for r in records] or [0], tf.int64)
    self._boxes = tf.ragged.constant([r.boxes for r in records], dtype=tf.float32,
                                     ragged_rank=1, inner_shape=(4,))
    self._labels = tf.ragged.constant([r.labels for r in records], dtype=tf.int32)
    self._difficult = tf.ragged.constant([r.difficult for r in records], dtype=tf.bool)
    self.description = description

  def __len__(self) -> int:
    return self._n

  def example(self, index, decode: bool = True):
    del decode  # PIL decodes the whole file (EXIF orientation, every mode; images.py)
    path = self._paths[index]
    image, ok = python_call(_decode_file, [path], (tf.uint8, tf.bool), _NO_IMAGE)
    return {'image': tf.ensure_shape(image, [None, None, 3]), 'boxes': self._boxes[index],
            'labels': self._labels[index], 'difficult': self._difficult[index],
            'image_id': self._ids[index], 'name': tf.strings.split(path, '/')[-1],
            'ok': tf.ensure_shape(ok, [])}


class Union(Source):
  """Sources one after the other: index i of the union is index i - start of one part."""

  def __init__(self, parts: Sequence[Source]):
    if not parts:
      raise ValueError('no splits given; set data.train_splits.')
    self.parts = list(parts)
    self._starts = np.cumsum([0] + [len(p) for p in parts])
    self.description = ' + '.join(p.description for p in parts)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def example(self, index, decode: bool = True):
    if len(self.parts) == 1:
      return self.parts[0].example(index, decode)
    part = tf.searchsorted(tf.constant(self._starts[1:-1], tf.int64), index[None],
                           side='right')[0]
    branches = [functools.partial(p.example, index - int(start), decode)
                for p, start in zip(self.parts, self._starts[:-1])]
    return tf.switch_case(tf.cast(part, tf.int32), branches)
