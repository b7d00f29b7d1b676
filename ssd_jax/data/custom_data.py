"""Custom datasets without code: Pascal VOC folders, YOLO datasets, COCO-format JSON.

All become lists of `Record`s, read once at start: annotations parsed (an
error names the file and line or annotation, and the fix), boxes that cannot
be trained on dropped with one log line per kind and file and a total, and
every image's header read, so that a missing or unreadable image is reported
once and left out (and a split with none readable is an error, not an empty
stream). sources.RecordsSource then reads the records by index; images are
decoded with PIL (ssd_jax/images.py) when used.

Layouts (data.format):
  voc_folder  ImageSets/Main/<split>.txt listing ids of Annotations/<id>.xml and
              JPEGImages/<id>.<ext>; or, without ImageSets, images with VOC XML
              files (LabelImg's) beside them, in images/ + annotations/ or in
              JPEGImages/ + Annotations/, matched by file stem. Such a folder has
              the splits 'train' and 'val' that `split_stems` makes.
  yolo        Ultralytics' data.yaml: splits are its keys, each a folder of
              images, a list file or a list of them; labels/<...>.txt beside
              images/<...> (see `yolo_label_path`) hold `class cx cy w h` lines.
  coco_json   one JSON file per split, file names relative to an image folder.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np
from absl import logging

from ssd_jax import images, paths
from ssd_jax.images import IMAGE_EXTENSIONS


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


def _parse_xml(path: str, fix: str):
  """The root element; `fix` ends the error when the file is not XML ('remove ...')."""
  try:
    return ET.parse(path).getroot()
  except ET.ParseError as e:
    line, column = e.position
    raise ValueError(f'{path}, line {line}, column {column}: not valid XML ({e.msg}). Fix the '
                     f'file, or {fix}.') from None


def _find_image(folder: str, image_id: str) -> Optional[str]:
  """folder/<id>.jpg, else <id> with another image extension (any case), else None."""
  for ext in IMAGE_EXTENSIONS:
    for candidate in (image_id + ext, image_id + ext.upper()):
      if os.path.isfile(os.path.join(folder, candidate)):
        return os.path.join(folder, candidate)
  return None


def _voc_record(xml_path: str, fix: str, class_names: Sequence[str], number: int,
                image_path: str, report: Report) -> Record:
  """The record of one VOC XML file (pixel boxes, 1-based) -> normalised xyxy."""
  tree = _parse_xml(xml_path, fix)
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


def read_voc_folder(root: str, split: str, class_names: Sequence[str], seed: int = 0,
                    val_fraction: float = 0.1, split_file: Optional[str] = None) -> list[Record]:
  """A Pascal VOC folder's split. With root/ImageSets: ImageSets/Main/{split}.txt
  lists ids; root/Annotations/{id}.xml and root/JPEGImages/{id}.jpg (or .png,
  ... see IMAGE_EXTENSIONS) hold the boxes and the image. Without it: see
  read_annotated_folder (seed, val_fraction and split_file are used there
  only). VOC pixel coordinates are 1-based."""
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f'data.root={root} does not exist: give a Pascal VOC folder (ImageSets/Main/'
        f'{split}.txt, Annotations/, JPEGImages/) or a folder of images with VOC XML files '
        f'beside them or in images/ and annotations/.')
  if not os.path.isdir(os.path.join(root, 'ImageSets')):
    return read_annotated_folder(root, split, class_names, seed, val_fraction, split_file)
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
    records.append(_voc_record(xml_path, f'remove its id from {list_file}', class_names,
                               number, image_path, report))
  return readable(records, report)


# --- a folder of images and VOC XML files without split lists (LabelImg) -------

PROJECT_SPLITS = ('train', 'val')
# Sub-folder pairs (images, annotations) looked for, names in any case; else both beside.
ANNOTATED_LAYOUTS = (('images', 'annotations'), ('jpegimages', 'annotations'))


def files_by_stem(folder: str, extensions: Sequence[str], report: Report) -> dict:
  """{file stem: path} of the files in `folder` (not below) whose extension, in any
  case, is one of `extensions`; of files sharing a stem, the one whose extension
  comes first in `extensions` is used and the others dropped through `report`."""
  candidates = collections.defaultdict(list)
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in extensions and os.path.isfile(os.path.join(folder, name)):
      candidates[stem].append(os.path.join(folder, name))
  found = {}
  for stem, files in candidates.items():
    files.sort(key=lambda p: extensions.index(os.path.splitext(p)[1].lower()))
    found[stem] = files[0]
    for other in files[1:]:
      report.drop(other, 'files whose stem another file has too',
                  f'{os.path.basename(files[0])} is used')
  return found


def annotated_folders(root: str) -> tuple[str, str]:
  """(image folder, annotation folder) of a folder without ImageSets: the first pair
  of ANNOTATED_LAYOUTS present as sub-folders, else root for both."""
  subs = {n.lower(): os.path.join(root, n) for n in os.listdir(root)
          if os.path.isdir(os.path.join(root, n))}
  for image_dir, annotation_dir in ANNOTATED_LAYOUTS:
    if image_dir in subs and annotation_dir in subs:
      return subs[image_dir], subs[annotation_dir]
  return root, root


def split_stems(stems: Sequence[str], seed: int, val_fraction: float) -> dict:
  """{'train': stems, 'val': stems}, each sorted: a seeded split of `stems` that
  depends on nothing else (not on the process, host or listing order).

  The val images are the round(n * val_fraction) stems that sort first by
  SHA-256 of '<seed>/<stem>' (at least one and at most n - 1 when n >= 2 and
  val_fraction > 0).
  """
  if not 0 <= val_fraction < 1:
    raise ValueError(f'data.val_fraction={val_fraction} must be in [0, 1).')
  stems = sorted(set(stems))
  n_val = round(len(stems) * val_fraction)
  if val_fraction > 0 and len(stems) >= 2:
    n_val = min(max(n_val, 1), len(stems) - 1)
  ranked = sorted(stems, key=lambda s: hashlib.sha256(f'{seed}/{s}'.encode()).hexdigest())
  val = set(ranked[:n_val])
  return {'train': [s for s in stems if s not in val], 'val': sorted(val)}


def recorded_split(split_file: Optional[str], stems: Sequence[str], seed: int,
                   val_fraction: float, root: str) -> dict:
  """split_stems' lists, read from `split_file` when it exists (so that a later
  run, or evaluation, uses the same images whatever changed since), else made
  and written there (atomically, through ssd_jax.paths; every host writes the
  same bytes). val_fraction is checked either way."""
  lists = split_stems(stems, seed, val_fraction)
  target = paths.path(split_file) if split_file else None
  if target is not None and target.is_file():
    recorded = json.loads(target.read_text())
    if (recorded.get('seed'), recorded.get('val_fraction')) != (seed, val_fraction):
      logging.warning('%s was made with seed %s and data.val_fraction %s (now %s and %s); its '
                      'split is used. Delete it to split anew.', split_file,
                      recorded.get('seed'), recorded.get('val_fraction'), seed, val_fraction)
    return {k: recorded[k] for k in PROJECT_SPLITS}
  if target is not None:
    target.parent.mkdir(parents=True, exist_ok=True)
    paths.write_text_atomic(target, json.dumps(
        dict(root=root, seed=seed, val_fraction=val_fraction, **lists), indent=1))
    logging.info('split %s: %d train and %d val images, recorded in %s', root,
                 len(lists['train']), len(lists['val']), split_file)
  return lists


def read_annotated_folder(root: str, split: str, class_names: Sequence[str], seed: int = 0,
                          val_fraction: float = 0.1,
                          split_file: Optional[str] = None) -> list[Record]:
  """Split 'train' or 'val' of a folder of images and VOC XML files without split
  lists: both in root, or in images/ and annotations/ (see annotated_folders),
  matched by file stem (image extensions of IMAGE_EXTENSIONS in either case;
  other files ignored). An image without an XML file has no objects; an XML
  file without an image is dropped. The split: recorded_split (split_file is
  where training records it, <workdir>/data_split.json). Image ids number the
  stems in sorted order, the same in both splits."""
  if split not in PROJECT_SPLITS:
    raise ValueError(f'{root} has no ImageSets/Main/ split lists, so its splits are '
                     f'{PROJECT_SPLITS}, made by data.val_fraction; data split {split!r} is '
                     f'not one of them (set data.train_splits=("train",) and '
                     f'data.eval_split="val").')
  image_dir, annotation_dir = annotated_folders(root)
  report = Report(f'{root} split {split}')
  pictures = files_by_stem(image_dir, IMAGE_EXTENSIONS, report)
  annotations = files_by_stem(annotation_dir, ('.xml',), report)
  if not pictures:
    raise FileNotFoundError(
        f'{image_dir} holds no image ({", ".join(IMAGE_EXTENSIONS)}, any case): data.root '
        f'must be a Pascal VOC folder with ImageSets/Main/<split>.txt, or a folder of images '
        f'with VOC XML files beside them or in images/ and annotations/.')
  for stem in sorted(set(annotations) - set(pictures)):
    report.drop(annotations[stem], 'annotations without an image',
                f'no {stem} with any of {", ".join(IMAGE_EXTENSIONS)} in {image_dir}')
  bare = sorted(set(pictures) - set(annotations))
  if bare:
    logging.warning('%s: %d images have no XML file and train as images without objects: %s',
                    root, len(bare), ', '.join(os.path.basename(pictures[s]) for s in bare[:5])
                    + (' ...' if len(bare) > 5 else ''))
  lists = recorded_split(split_file, list(pictures), seed, val_fraction, root)
  unsplit = set(pictures) - set(lists['train']) - set(lists['val'])
  if unsplit:
    logging.warning('%s: %d images are in neither split recorded in %s and are not used; '
                    'delete that file to split anew.', root, len(unsplit), split_file)
  numbers = {stem: i for i, stem in enumerate(sorted(pictures))}
  records = []
  for stem in lists[split]:
    if stem not in pictures:
      report.drop(os.path.join(image_dir, stem), 'images of the recorded split that are gone',
                  f'listed in {split_file}')
    elif stem in annotations:
      records.append(_voc_record(annotations[stem], 'delete it (the image then has no objects)',
                                 class_names, numbers[stem], pictures[stem], report))
    else:
      records.append(_record(pictures[stem], numbers[stem], [], [], [], None))
  return readable(records, report)


# --- Ultralytics YOLO: data.yaml, images/<split>/, labels/<split>/*.txt ----------

YAML_NAMES = ('data.yaml', 'data.yml')


def yolo_yaml_path(root: str) -> str:
  """data.root as a YAML file, or the folder holding it (data.yaml, data.yml, or its
  only .yaml file)."""
  if os.path.isfile(root):
    return root
  if not os.path.isdir(root):
    raise FileNotFoundError(f'data.root={root} does not exist; for data.format=yolo give '
                            f'an Ultralytics data.yaml or the folder holding it.')
  for name in YAML_NAMES:
    if os.path.isfile(os.path.join(root, name)):
      return os.path.join(root, name)
  found = sorted(n for n in os.listdir(root) if n.lower().endswith(('.yaml', '.yml')))
  if len(found) == 1:
    return os.path.join(root, found[0])
  raise FileNotFoundError(f'{root} has no data.yaml{" but " + ", ".join(found) if found else ""}'
                          f'; set data.root to the dataset\'s YAML file.')


def read_yolo_yaml(root: str) -> tuple[str, dict]:
  """(path, contents) of the dataset YAML that data.root names; errors name the file."""
  import yaml
  path = yolo_yaml_path(root)
  try:
    with open(path) as f:
      data = yaml.safe_load(f)
  except yaml.YAMLError as e:
    mark = getattr(e, 'problem_mark', None)
    where = f', line {mark.line + 1}' if mark else ''
    raise ValueError(f'{path}{where}: not valid YAML ({getattr(e, "problem", e)}).') from None
  if not isinstance(data, dict):
    raise ValueError(f'{path} is not a dataset YAML: it needs keys such as train, val, names.')
  return path, data


def yolo_names(data: dict, path: str) -> Optional[tuple[str, ...]]:
  """Class names of a dataset YAML, in class-index order: `names` as a list, or as
  a dict {0: name, 1: name, ...}; None when it has none (only `nc`)."""
  names = data.get('names')
  if names is None:
    return None
  if isinstance(names, dict):
    keys = sorted(names, key=lambda k: int(k))
    if [int(k) for k in keys] != list(range(len(keys))):
      raise ValueError(f'{path}: names has the class indices {keys}; they must be 0 .. '
                       f'{len(keys) - 1}.')
    names = [names[k] for k in keys]
  names = tuple(str(n) for n in names)
  if 'nc' in data and int(data['nc']) != len(names):
    raise ValueError(f'{path}: nc is {data["nc"]} but names lists {len(names)} classes.')
  return names


def yolo_class_names(root: str) -> tuple[str, ...]:
  """The class names data.root's YAML gives (for data.class_names when unset)."""
  path, data = read_yolo_yaml(root)
  names = yolo_names(data, path)
  if not names:
    raise ValueError(f'{path} has no names; set data.class_names to the names of classes '
                     f'0, 1, ... of its label files.')
  return names


def yolo_split_paths(path: str, data: dict, split: str) -> list[str]:
  """The folders and list files of a YAML split key, as Ultralytics resolves them:
  relative to `path:` (itself relative to the YAML's folder; the YAML's folder when
  unset); a relative entry starting ../ that does not exist is tried without it."""
  value = data.get(split)
  if not value:
    keys = [k for k in ('train', 'val', 'test') if data.get(k)]
    raise ValueError(f'{path} has no {split!r} split; its splits are {keys}. Set '
                     f'data.train_splits and data.eval_split to some of them.')
  base = os.path.join(os.path.dirname(os.path.abspath(path)), str(data.get('path') or ''))
  out = []
  for entry in value if isinstance(value, (list, tuple)) else [value]:
    full = os.path.normpath(os.path.join(base, str(entry)))
    if not os.path.exists(full) and str(entry).startswith('../'):
      full = os.path.normpath(os.path.join(base, str(entry)[3:]))
    if not os.path.exists(full):
      raise FileNotFoundError(f'{path}: {split}: {entry} is {full}, which does not exist.')
    out.append(full)
  return out


def _is_image(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS)


def yolo_images(split_path: str) -> list[str]:
  """The image files of one split entry: a folder (all images below it, sorted), or
  a list file of image paths, one a line (relative ones from the list's folder)."""
  if os.path.isdir(split_path):
    return sorted(os.path.join(d, n) for d, _, names in os.walk(split_path) for n in names
                  if _is_image(n))
  folder = os.path.dirname(split_path)
  with open(split_path) as f:
    lines = [line.strip() for line in f if line.strip()]
  return [os.path.normpath(os.path.join(folder, line)) for line in lines]


def yolo_label_path(image_path: str) -> str:
  """Where Ultralytics looks for an image's labels: the last /images/ of its path
  replaced by /labels/, and its extension by .txt."""
  head, sep, tail = image_path.rpartition(f'{os.sep}images{os.sep}')
  moved = f'{head}{os.sep}labels{os.sep}{tail}' if sep else image_path
  return os.path.splitext(moved)[0] + '.txt'


def parse_yolo_line(line: str, num_classes: int) -> tuple[Optional[tuple], Optional[str]]:
  """One label line -> ((class index, normalised xyxy), None), or (None, why it is
  malformed). `class cx cy w h` (normalised cxcywh), or `class x1 y1 x2 y2 x3 y3
  ...` (a polygon, normalised; its bounding box)."""
  fields = line.split()
  if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
    return None, (f'{len(fields)} values; a box is "class cx cy w h" and a polygon '
                  f'"class x1 y1 x2 y2 x3 y3 ..."')
  try:
    values = [float(v) for v in fields]
  except ValueError:
    return None, 'a value is not a number'
  cls = values[0]
  if not all(math.isfinite(v) for v in values) or cls != int(cls) or not 0 <= cls < num_classes:
    return None, f'class {fields[0]} is not one of 0 .. {num_classes - 1}'
  coords = values[1:]
  if min(coords) < -0.01 or max(coords) > 1.01:
    return None, 'coordinates outside 0 .. 1 (YOLO labels are fractions of the image size)'
  if len(coords) == 4:
    cx, cy, w, h = coords
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
  else:
    xs, ys = coords[0::2], coords[1::2]
    box = (min(xs), min(ys), max(xs), max(ys))
  return (int(cls), box), None


def yolo_objects(label_path: str, num_classes: int, report: Report) -> tuple[list, list]:
  """([normalised xyxy], [class index]) of a label file (none when it does not
  exist); malformed lines and untrainable boxes dropped through `report`, naming
  the file and line."""
  if not os.path.isfile(label_path):
    return [], []
  boxes, classes = [], []
  with open(label_path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      parsed, why = parse_yolo_line(line, num_classes)
      if why:
        report.drop(label_path, 'malformed label lines', f'line {number}: {why}: {line.strip()!r}')
        continue
      cls, box = parsed
      problem = box_problem(*box, 1.0, 1.0)
      if problem:
        report.drop(label_path, problem, f'line {number}: {line.strip()!r}')
        continue
      boxes.append(box)
      classes.append(cls)
  return boxes, classes


def yolo_label_map(data: dict, path: str, class_names: Optional[Sequence[str]]) -> list[int]:
  """Model class (1..) of each YAML class index: by name into data.class_names when
  both name classes, else index + 1."""
  names = yolo_names(data, path)
  if names is None or not class_names:
    if names is None and not class_names:
      raise ValueError(f'{path} has no names; set data.class_names.')
    return list(range(1, len(names or class_names) + 1))
  missing = [n for n in names if n not in class_names]
  if missing:
    raise ValueError(f'{path}: classes {missing} are not in data.class_names '
                     f'{tuple(class_names)}; add them there, or unset data.class_names to '
                     f'use the YAML\'s names.')
  return [list(class_names).index(n) + 1 for n in names]


def read_yolo(root: str, split: str, class_names: Optional[Sequence[str]]) -> list[Record]:
  """Split `split` (a key of the YAML data.root names: train, val, test) of an
  Ultralytics YOLO dataset. Labels: yolo_label_path of each image, lines as
  parse_yolo_line reads them; an image without a label file has no objects."""
  path, data = read_yolo_yaml(root)
  label_of = yolo_label_map(data, path, class_names)
  report, records = Report(f'{path} split {split}'), []
  paths = [p for entry in yolo_split_paths(path, data, split) for p in yolo_images(entry)]
  if not paths:
    raise FileNotFoundError(f'{path}: split {split} ({data[split]}) holds no image '
                            f'({", ".join(IMAGE_EXTENSIONS)}, any case).')
  for number, image_path in enumerate(paths):
    boxes, classes = yolo_objects(yolo_label_path(image_path), len(label_of), report)
    records.append(_record(image_path, number, boxes, [label_of[c] for c in classes],
                           [False] * len(classes), None))
  unlabelled = [p for p in paths if not os.path.isfile(yolo_label_path(p))]
  if unlabelled:
    logging.warning('%s split %s: %d of %d images have no label file and train as images '
                    'without objects (e.g. no %s)', path, split, len(unlabelled), len(paths),
                    yolo_label_path(unlabelled[0]))
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
