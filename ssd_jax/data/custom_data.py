"""Custom datasets without code: a Pascal VOC folder or a COCO-format JSON.

Both become lists of `Record`s (annotations read once, at start), which
sources.RecordsSource reads by index; images are decoded with PIL
(ssd_jax/images.py) when used.
"""
from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass
class Record:
  path: str
  image_id: int
  boxes: np.ndarray       # f32 [N, 4] normalised xyxy
  labels: np.ndarray      # i32 [N] model classes (1..)
  difficult: np.ndarray   # bool [N]


def _text(node, tag, where):
  child = node.find(tag)
  if child is None or child.text is None:
    raise ValueError(f'{where}: missing <{tag}>; every object needs it (Pascal VOC format).')
  return child.text.strip()


def read_voc_folder(root: str, split: str, class_names: Sequence[str]) -> list[Record]:
  """root/ImageSets/Main/{split}.txt lists ids; root/Annotations/{id}.xml and
  root/JPEGImages/{id}.jpg hold the boxes and the image. VOC pixel coordinates
  are 1-based."""
  list_file = os.path.join(root, 'ImageSets', 'Main', f'{split}.txt')
  if not os.path.isfile(list_file):
    raise FileNotFoundError(f'{list_file} does not exist: a Pascal VOC folder needs '
                            f'ImageSets/Main/<split>.txt listing the image ids of split {split!r}.')
  with open(list_file) as f:
    ids = [line.split()[0] for line in f if line.strip()]
  records = []
  for number, image_name in enumerate(ids):
    xml_path = os.path.join(root, 'Annotations', f'{image_name}.xml')
    if not os.path.isfile(xml_path):
      raise FileNotFoundError(f'{xml_path} is listed in {list_file} but does not exist.')
    tree = ET.parse(xml_path).getroot()
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
      coords = [float(_text(bb, t, xml_path)) - 1 for t in ('xmin', 'ymin', 'xmax', 'ymax')]
      boxes.append(np.array(coords) / [w, h, w, h])
      labels.append(class_names.index(name) + 1)
      flag = obj.find('difficult')
      difficult.append(flag is not None and flag.text is not None and flag.text.strip() == '1')
    records.append(_record(os.path.join(root, 'JPEGImages', f'{image_name}.jpg'), number,
                           boxes, labels, difficult))
  return records


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
    per_image[ann['image_id']].append(ann)
  records = []
  for img in data['images']:
    w, h = float(img['width']), float(img['height'])
    anns = per_image[img['id']]
    boxes = [np.array([a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                       a['bbox'][1] + a['bbox'][3]]) / [w, h, w, h] for a in anns]
    records.append(_record(os.path.join(image_dir, img['file_name']), int(img['id']), boxes,
                           [label_of[a['category_id']] for a in anns],
                           [bool(a.get('iscrowd', 0)) for a in anns]))
  return records


def _record(path, image_id, boxes, labels, difficult) -> Record:
  return Record(path, image_id, np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(labels, np.int32), np.asarray(difficult, bool))
