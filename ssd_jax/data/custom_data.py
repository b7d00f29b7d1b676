"""Custom datasets without code: a Pascal VOC folder or a COCO-format JSON.

Both become lists of `Record`s, read once at start: annotations parsed (an
error names the file and line or annotation, and the fix), boxes that cannot
be trained on dropped with one log line per kind and file and a total, and
every image's header read, so that a missing or unreadable image is reported
once and left out (and a split with none readable is an error, not an empty
stream). sources.RecordsSource then reads the records by index; images are
decoded with PIL (ssd_jax/images.py) when used.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np
from absl import logging

from ssd_jax import images

# Besides .jpg, the image formats looked for in a VOC folder's JPEGImages/.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


@dataclasses.dataclass
class Record:
  path: str
  image_id: int
  boxes: np.ndarray       # f32 [N, 4] normalised xyxy
  labels: np.ndarray      # i32 [N] model classes (1..)
  difficult: np.ndarray   # bool [N]
  size: tuple = None      # (height, width) the annotation gives, pixels


class Report:
  """Problems found while reading a split: logged once per (file, kind), counted."""

  def __init__(self, where: str):
    self.where, self.counts, self._seen = where, collections.Counter(), set()

  def drop(self, path: str, kind: str, detail: str = '') -> None:
    self.counts[kind] += 1
    if (path, kind) not in self._seen:
      self._seen.add((path, kind))
      logging.warning('%s: dropped %s%s', path, kind, f' ({detail})' if detail else '')

  def summary(self) -> None:
    if self.counts:
      logging.warning('%s: %s', self.where, ', '.join(f'{n} dropped: {kind}'
                                                         for kind, n in self.counts.items()))


def box_problem(x0: float, y0: float, x1: float, y1: float, width: float,
                height: float) -> Optional[str]:
  """Why a pixel box (xyxy) cannot be trained on, or None."""
  if x1 < x0 or y1 < y0:
    return 'boxes with xmin > xmax or ymin > ymax'
  if x1 == x0 or y1 == y0:
    return 'boxes of zero width or height'
  if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
    return 'boxes entirely outside the image'
  return None


def _text(node, tag, where):
  child = node.find(tag)
  if child is None or child.text is None:
    raise ValueError(f'{where}: missing <{tag}>; every object needs it (Pascal VOC format).')
  return child.text.strip()


def _parse_xml(path: str, list_file: str):
  try:
    return ET.parse(path).getroot()
  except ET.ParseError as e:
    line, column = e.position
    raise ValueError(f'{path}, line {line}, column {column}: not valid XML ({e.msg}). Fix the '
                     f'file, or remove its id from {list_file}.') from None


def _find_image(folder: str, image_id: str) -> Optional[str]:
  """folder/<id>.jpg, else <id> with another image extension (any case), else None."""
  for ext in IMAGE_EXTENSIONS:
    for candidate in (image_id + ext, image_id + ext.upper()):
      if os.path.isfile(os.path.join(folder, candidate)):
        return os.path.join(folder, candidate)
  return None


def _voc_record(xml_path: str, list_file: str, class_names: Sequence[str], number: int,
                image_path: str, report: Report) -> Record:
  tree = _parse_xml(xml_path, list_file)
  size = tree.find('size')
  if size is None:
    raise ValueError(f'{xml_path}: missing <size> with <width> and <height>.')
  w, h = float(_text(size, 'width', xml_path)), float(_text(size, 'height', xml_path))
  boxes, labels, difficult = [], [], []
  for obj in tree.findall('object'):
    name = _text(obj, 'name', xml_path)
    if name not in class_names:
      raise ValueError(f'{xml_path}: object <name>{name}</name> is not in data.class_names '
                       f'{tuple(class_names)}; add it there or fix the annotation.')
    bb = obj.find('bndbox')
    if bb is None:
      raise ValueError(f'{xml_path}: object {name!r} has no <bndbox>.')
    x0, y0, x1, y1 = (float(_text(bb, t, xml_path)) - 1 for t in ('xmin', 'ymin', 'xmax', 'ymax'))
    problem = box_problem(x0, y0, x1, y1, w, h)
    if problem:
      report.drop(xml_path, problem, f'{name} {x0 + 1:g},{y0 + 1:g},{x1 + 1:g},{y1 + 1:g}')
      continue
    boxes.append(np.array([x0, y0, x1, y1]) / [w, h, w, h])
    labels.append(class_names.index(name) + 1)
    flag = obj.find('difficult')
    difficult.append(flag is not None and flag.text is not None and flag.text.strip() == '1')
  return _record(image_path, number, boxes, labels, difficult, (h, w))


def read_voc_folder(root: str, split: str, class_names: Sequence[str]) -> list[Record]:
  """root/ImageSets/Main/{split}.txt lists ids; root/Annotations/{id}.xml and
  root/JPEGImages/{id}.jpg (or .png, ... see IMAGE_EXTENSIONS) hold the boxes
  and the image. VOC pixel coordinates are 1-based."""
  list_file = os.path.join(root, 'ImageSets', 'Main', f'{split}.txt')
  if not os.path.isfile(list_file):
    raise FileNotFoundError(f'{list_file} does not exist: a Pascal VOC folder needs '
                            f'ImageSets/Main/<split>.txt listing the image ids of split {split!r}.')
  with open(list_file) as f:
    ids = [line.split()[0] for line in f if line.strip()]
  report, records = Report(f'{root} split {split}'), []
  for number, image_name in enumerate(ids):
    xml_path = os.path.join(root, 'Annotations', f'{image_name}.xml')
    if not os.path.isfile(xml_path):
      raise FileNotFoundError(f'{xml_path} is listed in {list_file} but does not exist.')
    image_path = _find_image(os.path.join(root, 'JPEGImages'), image_name)
    if image_path is None:
      report.drop(os.path.join(root, 'JPEGImages', image_name), 'images that do not exist',
                  f'no {image_name} with any of {", ".join(IMAGE_EXTENSIONS)}')
      continue
    records.append(_voc_record(xml_path, list_file, class_names, number, image_path, report))
  return readable(records, report)


def _coco_box(ann: dict, w: float, h: float, annotations: str, report: Report):
  """An annotation's bbox [x, y, width, height] (pixels) -> normalised xyxy, or None."""
  x, y, bw, bh = (float(v) for v in ann['bbox'])
  if bw < 0 or bh < 0:
    report.drop(annotations, 'boxes of negative width or height', f'annotation {ann.get("id")}')
    return None
  problem = box_problem(x, y, x + bw, y + bh, w, h)
  if problem:
    report.drop(annotations, problem, f'annotation {ann.get("id")}')
    return None
  return np.array([x, y, x + bw, y + bh]) / [w, h, w, h]


def read_coco_json(annotations: str, image_dir: str,
                   class_names: Optional[Sequence[str]]) -> list[Record]:
  """A COCO-format detection JSON (images, annotations, categories); file names are
  relative to `image_dir`. Classes follow data.class_names when given (matched by
  category name), else the JSON's categories sorted by id. Crowd boxes are
  flagged difficult."""
  if not os.path.isfile(annotations):
    raise FileNotFoundError(f'COCO annotation file {annotations} does not exist.')
  with open(annotations) as f:
    data = json.load(f)
  for key in ('images', 'annotations', 'categories'):
    if key not in data:
      raise ValueError(f'{annotations}: no "{key}" list; this is not a COCO detection file.')
  categories = sorted(data['categories'], key=lambda c: c['id'])
  names = list(class_names) if class_names else [c['name'] for c in categories]
  label_of = {}
  for c in categories:
    if c['name'] not in names:
      raise ValueError(f'{annotations}: category {c["name"]!r} is not in data.class_names.')
    label_of[c['id']] = names.index(c['name']) + 1
  per_image = {img['id']: [] for img in data['images']}
  for ann in data['annotations']:
    if ann.get('image_id') not in per_image:
      raise ValueError(f'{annotations}: annotation {ann.get("id")} names image_id '
                       f'{ann.get("image_id")}, which is not in "images".')
    if ann.get('category_id') not in label_of:
      raise ValueError(f'{annotations}: annotation {ann.get("id")} has category_id '
                       f'{ann.get("category_id")}, which is not in "categories" (ids '
                       f'{sorted(label_of)}); add the category or fix the annotation.')
    per_image[ann['image_id']].append(ann)
  report, records = Report(annotations), []
  for img in data['images']:
    w, h = float(img['width']), float(img['height'])
    kept = [(a, _coco_box(a, w, h, annotations, report)) for a in per_image[img['id']]]
    kept = [(a, box) for a, box in kept if box is not None]
    records.append(_record(os.path.join(image_dir, img['file_name']), int(img['id']),
                           [box for _, box in kept], [label_of[a['category_id']] for a, _ in kept],
                           [bool(a.get('iscrowd', 0)) for a, _ in kept], (h, w)))
  return readable(records, report)


def _record(path, image_id, boxes, labels, difficult, size) -> Record:
  return Record(path, image_id, np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(labels, np.int32), np.asarray(difficult, bool), size)


def readable(records: list[Record], report: Report) -> list[Record]:
  """The records whose image exists and whose header PIL can read (read with
  threads: it is file I/O); the others dropped through `report`. A size that
  disagrees with the annotation's is logged (boxes are normalised by the
  annotation's). Raises if none is readable."""
  def probe(record):
    try:
      return images.image_size(record.path), None
    except ValueError as e:
      return None, str(e)

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    probes = list(pool.map(probe, records))
  kept = []
  for record, (size, error) in zip(records, probes):
    if error:
      report.drop(record.path, 'unreadable images', error)
      continue
    if record.size and tuple(size) != tuple(int(v) for v in record.size):
      logging.warning('%s is %dx%d pixels but its annotation says %dx%d; its boxes are placed '
                      'by the annotation\'s size (check the file, e.g. an EXIF rotation).',
                      record.path, size[1], size[0], int(record.size[1]), int(record.size[0]))
    kept.append(record)
  report.summary()
  if records and not kept:
    raise ValueError(f'no readable image in {report.where}: all {len(records)} listed images '
                     f'are missing or unreadable (see the log above).')
  return kept
