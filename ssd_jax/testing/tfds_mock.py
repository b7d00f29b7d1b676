"""tfds.testing.mock_data for detection datasets read by index (tfds.data_source).

TFDS's own mock serialises random examples whose `objects` sequences have
unequal lengths, which TFDS then refuses to decode. This one builds valid
examples from each dataset's real feature spec (VOC's, COCO's, ...) and serves
them through `tfds.data_source`, so the real reading code runs on them.
"""
from __future__ import annotations

import contextlib

import numpy as np
import tensorflow_datasets as tfds

features_lib = tfds.features


def _value(feature, rng: np.random.Generator, image_shape, index: int):
  """A random valid value of one feature (not a Sequence)."""
  if isinstance(feature, features_lib.Image):
    return rng.integers(0, 256, image_shape, dtype=np.uint8)
  if isinstance(feature, features_lib.BBoxFeature):
    corners = np.sort(rng.uniform(0, 1, (2, 2)), axis=0)  # [[y0, x0], [y1, x1]]
    return tfds.features.BBox(*corners[0], *corners[1])
  if isinstance(feature, features_lib.ClassLabel):
    return int(rng.integers(feature.num_classes))
  if isinstance(feature, features_lib.Text):
    return f'mock_{index:06d}.jpg'
  return np.zeros(feature.shape, feature.np_dtype) + index


def _sequence(feature, rng, image_shape, index):
  """`length` random elements of a Sequence, as the dict of lists TFDS serialises."""
  length = int(rng.integers(1, 6))
  inner = feature.feature
  if isinstance(inner, features_lib.FeaturesDict):
    return {k: [_value(f, rng, image_shape, index) for _ in range(length)]
            for k, f in inner.items()}
  return [_value(inner, rng, image_shape, index) for _ in range(length)]


def random_example(features, rng: np.random.Generator, index: int,
                   image_shape=(40, 60, 3)) -> dict:
  """A random valid example of a FeaturesDict (sequences of consistent length)."""
  return {k: (_sequence(f, rng, image_shape, index) if isinstance(f, features_lib.Sequence)
              else _value(f, rng, image_shape, index))
          for k, f in features.items()}


@contextlib.contextmanager
def mock_detection_data(num_examples: int, seed: int = 0, image_shape=(40, 60, 3)):
  """Within it, `tfds.data_source(name, ...)` of any split serves `num_examples`
  serialised random examples of that dataset's layout (no files, no download)."""
  def as_data_source(builder, split=None, decoders=None, deserialize_method=None, **kwargs):
    del split, decoders, deserialize_method, kwargs
    features = builder.info.features
    rng = np.random.default_rng(seed)
    return [features.serialize_example(random_example(features, rng, i, image_shape))
            for i in range(num_examples)]

  with tfds.testing.mock_data(num_examples=num_examples, as_data_source_fn=as_data_source):
    yield
