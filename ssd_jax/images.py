"""Reading image files into 8-bit RGB arrays with PIL; no TensorFlow.

Used by custom datasets, `--mode=predict` and notebooks alike. Every mode PIL
can open becomes correct 8-bit RGB: 16-bit and 32-bit grayscale are scaled
(not clipped), float images are scaled from [0, 1] when they look like it,
palette, CMYK, LA/RGBA and 1-bit images are converted, and the EXIF
orientation is applied (the image as a viewer shows it).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# File extensions (lower case) read as images wherever a folder is searched for them:
# custom datasets, `--mode=predict --input=FOLDER`. Matched in either case.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')

# PIL modes whose pixels are integers wider than 8 bits, with their full scale.
_WIDE_INTEGER_MODES = {'I;16': 65535, 'I;16B': 65535, 'I;16L': 65535, 'I;16N': 65535,
                       'I': 65535}


def to_rgb8(image: Image.Image) -> np.ndarray:
  """A PIL image of any mode -> uint8 [H, W, 3] RGB.

  'I' (32-bit) images are read as 16-bit data, which is what PIL opens 16-bit
  PNGs and TIFFs as; values above 65535 saturate.
  """
  if image.mode in _WIDE_INTEGER_MODES:
    pixels = np.asarray(image, np.float64) * (255.0 / _WIDE_INTEGER_MODES[image.mode])
    grey = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == 'F':
    pixels = np.asarray(image, np.float64)
    if np.nanmax(pixels, initial=0.0) <= 1.0:
      pixels = pixels * 255.0
    grey = np.clip(np.round(np.nan_to_num(pixels)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  return np.asarray(image.convert('RGB'), np.uint8)


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB as a viewer shows the file (see the module docstring);
  a clear error naming the file when it cannot be read."""
  try:
    with Image.open(path) as image:
      return to_rgb8(ImageOps.exif_transpose(image))
  except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
    raise ValueError(f'cannot read image {path}: {e}. Check that the file is a complete '
                     f'JPEG/PNG/BMP/... image, or remove it from the input.') from e


def image_size(path: str) -> tuple[int, int]:
  """(height, width) as read_image returns it, from the file's header alone
  (EXIF rotations by 90 degrees swap them); ValueError naming the file if PIL
  cannot open it."""
  try:
    with Image.open(path) as image:
      width, height = image.size
      orientation = image.getexif().get(0x0112, 1)
  except Exception as e:  # noqa: BLE001
    raise ValueError(f'cannot read image {path}: {e}. Check that the file is a complete '
                     f'JPEG/PNG/BMP/... image, or remove it from the input.') from e
  return (width, height) if orientation in (5, 6, 7, 8) else (height, width)
