"""Reading image files into RGB arrays with PIL; no TensorFlow.

Used by custom datasets, `--mode=predict` and notebooks alike.
"""
from __future__ import annotations

import numpy as np
from absl import logging
from PIL import Image


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB (grayscale, RGBA and palette images converted); a clear
  error naming the file when it cannot be read."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'), np.uint8)
  except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
    raise ValueError(f'cannot read image {path}: {e}. Check that the file is a complete '
                     f'JPEG/PNG/BMP/... image, or remove it from the input.') from e


def load_image(path: str) -> np.ndarray:
  """`read_image`, or an empty [0, 0, 3] array (logged) when the file cannot be read."""
  try:
    return read_image(path)
  except ValueError as e:
    logging.error('skipping unreadable image: %s', e)
    return np.zeros((0, 0, 3), np.uint8)
