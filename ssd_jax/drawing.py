"""Detections drawn on images: a box in its class's colour and a readable label.

`draw(image, found)` takes a uint8 [H, W, 3] image and a Detector's result
(boxes in pixels xyxy, scores, classes, names) and returns a PIL image.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@functools.lru_cache(maxsize=1)
def _palette() -> tuple:
  import matplotlib
  return tuple(tuple(int(255 * v) for v in matplotlib.colormaps['tab20'](i)[:3])
               for i in range(20))


def relative_luminance(rgb) -> float:
  """WCAG 2 relative luminance of an 8-bit sRGB colour: 0 (black) .. 1 (white)."""
  linear = [(c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4
            for c in rgb]
  return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_colour(background) -> tuple:
  """Black or white, whichever has the higher WCAG contrast ratio on `background` (RGB)."""
  lum = relative_luminance(background)
  return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


def label_origin(box, label_size, image_size) -> tuple[int, int]:
  """Top-left pixel (x, y) of a box's label of `label_size` (w, h) in an image of
  `image_size` (w, h): above the box's top-left corner (pixels xyxy), or just
  inside its top edge when there is no room above; moved left or up as far as
  needed to stay inside the image."""
  (x0, y0), (w, h), (width, height) = box[:2], label_size, image_size
  y = y0 - h if y0 - h >= 0 else y0
  x = min(max(0, x0), width - w)
  y = min(max(0, y), height - h)
  return int(round(max(0, x))), int(round(max(0, y)))


def label_font_size(image_size) -> int:
  """Label font size in pixels for an image of (w, h): 1/32 of the shorter side,
  11 to 40 px."""
  return int(min(40, max(11, round(min(image_size) / 32))))


def draw(image: np.ndarray, found: dict, min_score: float = 0.4) -> Image.Image:
  """A copy of the image (uint8 [H, W, 3]) with the detections of score >= min_score
  drawn: a box in its class's colour (found['boxes'] pixels xyxy) and a label
  "<name> <score>" on a filled background of that colour, black or white text
  (text_colour), placed by label_origin so it stays inside the image."""
  canvas = Image.fromarray(np.asarray(image, np.uint8))
  pen = ImageDraw.Draw(canvas)
  font = ImageFont.load_default(size=label_font_size(canvas.size))
  line = max(1, round(min(canvas.size) / 150))
  pad = max(1, label_font_size(canvas.size) // 6)
  for box, score, cls, name in zip(found['boxes'], found['scores'], found['classes'],
                                   found['names']):
    if score < min_score:
      continue
    colour = _palette()[int(cls) % 20]
    box = [float(v) for v in box]
    pen.rectangle(box, outline=colour, width=line)
    label = f'{name} {score:.2f}'
    left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    x, y = label_origin(box, size, canvas.size)
    pen.rectangle((x, y, x + size[0] - 1, y + size[1] - 1), fill=colour)
    pen.text((x + pad - left, y + pad - top), label, fill=text_colour(colour), font=font)
  return canvas
