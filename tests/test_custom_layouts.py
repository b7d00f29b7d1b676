"""Datasets as people have them: LabelImg folders (images and VOC XML files, no
ImageSets) and Ultralytics YOLO datasets, with the odd files real folders hold."""
import json
import logging as py_logging
import os

import numpy as np
import pytest
from PIL import Image

from ssd_jax import config_lib, workdirs, workflows
from ssd_jax.data import custom_data, input_pipeline
from ssd_jax.task import Task
from ssd_jax.testing import step_inputs, synthetic

CLASSES = ('cat', 'dog')


def jpeg(path, size=(40, 30), colour=(120, 80, 40)):
  """Writes a real JPEG (or PNG, by the extension) of `size` (w, h)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = 'PNG' if path.suffix.lower() == '.png' else 'JPEG'
  Image.new('RGB', size, colour).save(path, format=fmt)


def voc_xml(path, size, objects):
  """A LabelImg-style XML: objects (name, x0, y0, x1, y1), VOC's 1-based pixels."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(synthetic.VOC_XML.format(w=size[0], h=size[1], objects=''.join(
      synthetic.VOC_OBJECT.format(name=n, difficult=0, x0=x0, y0=y0, x1=x1, y1=y1)
      for n, x0, y0, x1, y1 in objects)))


def labelimg_folder(images, annotations):
  """Five images, four XML files, odd files: an upper-case .JPG, a .png without an
  XML file, an XML file without an image, a classes.txt and a notes file."""
  jpeg(images / 'a.jpg')
  voc_xml(annotations / 'a.xml', (40, 30), [('dog', 1, 1, 20, 15), ('cat', 11, 6, 40, 30)])
  jpeg(images / 'B.JPG', (80, 60))
  voc_xml(annotations / 'B.xml', (80, 60), [('cat', 41, 31, 80, 60)])
  jpeg(images / 'c.png')                       # no annotation: an image without objects
  jpeg(images / 'd.jpeg')
  voc_xml(annotations / 'd.xml', (40, 30), [('dog', 5, 5, 25, 25)])
  jpeg(images / 'e.jpg')
  voc_xml(annotations / 'e.xml', (40, 30), [])
  voc_xml(annotations / 'orphan.xml', (40, 30), [('cat', 1, 1, 5, 5)])  # no image
  (annotations / 'classes.txt').write_text('cat\ndog\n')
  (images / 'notes.md').write_text('taken in 2024')


EXPECTED_BOXES = {  # normalised xyxy from the XML's 1-based pixels, by hand
    'a': [[0, 0, 19 / 40, 14 / 30], [10 / 40, 5 / 30, 39 / 40, 29 / 30]],
    'B': [[40 / 80, 30 / 60, 79 / 80, 59 / 60]],
    'c': np.zeros((0, 4)),
    'd': [[4 / 40, 4 / 30, 24 / 40, 24 / 30]],
    'e': np.zeros((0, 4)),
}
EXPECTED_LABELS = {'a': [2, 1], 'B': [1], 'c': [], 'd': [2], 'e': []}


def stem(record) -> str:
  return os.path.splitext(os.path.basename(record.path))[0]


@pytest.mark.parametrize('layout', ['beside', 'images_annotations', 'Images_Annotations'])
def test_labelimg_folders_read_every_image_once(tmp_path, layout, caplog):
  if layout == 'beside':
    labelimg_folder(tmp_path, tmp_path)
  else:
    image_dir, annotation_dir = layout.split('_')
    labelimg_folder(tmp_path / image_dir, tmp_path / annotation_dir)
  with caplog.at_level(py_logging.WARNING):
    train = custom_data.read_voc_folder(str(tmp_path), 'train', CLASSES, val_fraction=0.25)
    val = custom_data.read_voc_folder(str(tmp_path), 'val', CLASSES, val_fraction=0.25)
  assert len(val) == 1 and len(train) == 4  # round(5 * 0.25)
  records = {stem(r): r for r in train + val}
  assert sorted(records) == ['B', 'a', 'c', 'd', 'e']
  for name, record in records.items():
    np.testing.assert_allclose(record.boxes, np.reshape(EXPECTED_BOXES[name], (-1, 4)),
                               atol=1e-6)
    np.testing.assert_array_equal(record.labels, EXPECTED_LABELS[name])
  assert sorted(r.image_id for r in train + val) == [0, 1, 2, 3, 4]  # sorted stems
  assert 'orphan.xml: dropped annotations without an image' in caplog.text
  assert '1 images have no XML file and train as images without objects: c.png' in caplog.text


def test_the_split_is_seeded_complete_and_independent_of_listing_order():
  stems = [f'img_{i:03d}' for i in range(50)]
  split = custom_data.split_stems(stems, seed=0, val_fraction=0.1)
  assert len(split['val']) == 5 and len(split['train']) == 45
  assert sorted(split['train'] + split['val']) == stems
  assert custom_data.split_stems(stems[::-1], 0, 0.1) == split  # any order, any host
  assert custom_data.split_stems(stems, 1, 0.1)['val'] != split['val']  # seeded
  assert custom_data.split_stems(stems[:3], 0, 0.1)['val'].__len__() == 1  # at least one
  assert custom_data.split_stems(stems[:3], 0, 0.0)['val'] == []
  with pytest.raises(ValueError, match='data.val_fraction=1.5 must be in'):
    custom_data.split_stems(stems, 0, 1.5)


def test_the_split_is_recorded_and_reused_when_the_folder_changes(tmp_path, caplog):
  labelimg_folder(tmp_path / 'data', tmp_path / 'data')
  split_file = tmp_path / 'run' / 'data_split.json'
  val = custom_data.read_voc_folder(str(tmp_path / 'data'), 'val', CLASSES, 0, 0.25,
                                    str(split_file))
  recorded = json.loads(split_file.read_text())
  assert recorded['val'] == [stem(r) for r in val] and len(recorded['train']) == 4
  for i in range(20):  # new images: a fresh split would now put others in val
    jpeg(tmp_path / 'data' / f'new_{i}.jpg')
  with caplog.at_level(py_logging.WARNING):
    again = custom_data.read_voc_folder(str(tmp_path / 'data'), 'val', CLASSES, 0, 0.25,
                                        str(split_file))
  assert [r.path for r in again] == [r.path for r in val]
  assert '20 images are in neither split recorded in' in caplog.text


def test_a_folder_without_imagesets_has_only_train_and_val(tmp_path):
  labelimg_folder(tmp_path, tmp_path)
  with pytest.raises(ValueError, match=r"splits are \('train', 'val'\).*'trainval' is not"):
    custom_data.read_voc_folder(str(tmp_path), 'trainval', CLASSES)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='empty holds no image'):
    custom_data.read_voc_folder(str(tmp_path / 'empty'), 'train', CLASSES)


# --- YOLO -------------------------------------------------------------------------

def yolo_dataset(root):
  """An Ultralytics layout: images/train (a folder, with a sub-folder), images/val
  listed in val.txt; names as a dict; odd label files."""
  jpeg(root / 'images' / 'train' / 'a.jpg', (100, 50))
  (root / 'labels' / 'train').mkdir(parents=True)
  (root / 'labels' / 'train' / 'a.txt').write_text(
      '0 0.5 0.5 0.2 0.4\n'
      '\n'
      '1 0.25 0.25 0.5 0.5\n')
  jpeg(root / 'images' / 'train' / 'sub' / 'b.PNG', (60, 60))
  (root / 'labels' / 'train' / 'sub').mkdir()
  (root / 'labels' / 'train' / 'sub' / 'b.txt').write_text(
      '1 0.1 0.2 0.5 0.2 0.3 0.6\n'      # a polygon: its bounding box
      '1 0.5 0.5 0.2\n'                  # malformed: four values
      '7 0.5 0.5 0.2 0.2\n'              # malformed: no class 7
      '0 12 30 40 20\n'                  # malformed: pixels, not fractions
      'x 0.5 0.5 0.2 0.2\n'              # malformed: not a number
      '0 0.5 0.5 0.0 0.3\n')             # zero width
  jpeg(root / 'images' / 'train' / 'C.JPEG')  # no label file: no objects
  (root / 'images' / 'train' / 'README.md').write_text('not an image')
  jpeg(root / 'images' / 'val' / 'v.jpg')
  (root / 'labels' / 'val').mkdir(parents=True)
  (root / 'labels' / 'val' / 'v.txt').write_text('1 0.5 0.5 1.0 1.0\n')
  (root / 'val.txt').write_text('./images/val/v.jpg\n')
  (root / 'data.yaml').write_text(
      f'path: {root}\ntrain: images/train\nval: val.txt\ntest:\nnames:\n  0: cat\n  1: dog\n')
  return root


def test_yolo_label_paths_are_where_ultralytics_looks():
  assert custom_data.yolo_label_path('/d/images/train/a.jpg') == '/d/labels/train/a.txt'
  assert (custom_data.yolo_label_path('/x/images/y/images/b.PNG')
          == '/x/images/y/labels/b.txt')  # the last /images/ only
  assert custom_data.yolo_label_path('/d/photos/c.jpeg') == '/d/photos/c.txt'


def test_yolo_dataset_records_and_malformed_lines(tmp_path, caplog):
  root = yolo_dataset(tmp_path / 'yolo')
  with caplog.at_level(py_logging.WARNING):
    train = custom_data.read_yolo(str(root), 'train', None)
  names = [os.path.relpath(r.path, root / 'images' / 'train') for r in train]
  assert names == ['C.JPEG', 'a.jpg', 'sub/b.PNG']
  np.testing.assert_allclose(train[1].boxes, [[0.4, 0.3, 0.6, 0.7], [0, 0, 0.5, 0.5]],
                             atol=1e-6)
  np.testing.assert_array_equal(train[1].labels, [1, 2])
  np.testing.assert_allclose(train[2].boxes, [[0.1, 0.2, 0.5, 0.6]], atol=1e-6)
  np.testing.assert_array_equal(train[2].labels, [2])
  assert train[0].boxes.shape == (0, 4)
  b_txt = str(root / 'labels' / 'train' / 'sub' / 'b.txt')
  assert f'{b_txt}: dropped malformed label lines (line 2: 4 values' in caplog.text
  assert f'{b_txt}: dropped boxes of zero width or height (line 6' in caplog.text
  assert '4 dropped: malformed label lines, 1 dropped: boxes of zero width' in caplog.text
  assert '1 of 3 images have no label file' in caplog.text
  val = custom_data.read_yolo(str(root / 'data.yaml'), 'val', None)
  assert [os.path.basename(r.path) for r in val] == ['v.jpg']
  np.testing.assert_allclose(val[0].boxes, [[0, 0, 1, 1]])
  with pytest.raises(ValueError, match=r"data.yaml has no 'test' split; its splits are "
                                       r"\['train', 'val'\]"):
    custom_data.read_yolo(str(root), 'test', None)


def test_yolo_lines_are_each_reported_with_their_line(tmp_path):
  for line, why in [('1 0.5 0.5 0.2', '4 values'), ('7 0.5 0.5 0.2 0.2', 'class 7 is not'),
                    ('0 12 30 40 20', 'coordinates outside 0 .. 1'),
                    ('x 0.5 0.5 0.2 0.2', 'not a number'), ('0.5 0.5 0.5 0.2 0.2', 'class 0.5')]:
    parsed, reason = custom_data.parse_yolo_line(line, 2)
    assert parsed is None and why in reason, (line, reason)
  assert custom_data.parse_yolo_line('1 0.5 0.5 0.2 0.4', 2) == ((1, (0.4, 0.3, 0.6, 0.7)),
                                                                  None)


def test_yolo_class_names_roboflow_paths_and_names_by_name(tmp_path):
  root = tmp_path / 'rf'  # Roboflow's export: ../train/images beside the YAML
  jpeg(root / 'train' / 'images' / 'a.jpg')
  (root / 'train' / 'labels').mkdir(parents=True)
  (root / 'train' / 'labels' / 'a.txt').write_text('1 0.5 0.5 0.5 0.5\n')
  (root / 'data.yaml').write_text("train: ../train/images\nval: ../valid/images\nnc: 2\n"
                                  "names: ['head', 'helmet']\n")
  assert custom_data.yolo_class_names(str(root)) == ('head', 'helmet')
  records = custom_data.read_yolo(str(root), 'train', ('person', 'helmet', 'head'))
  np.testing.assert_array_equal(records[0].labels, [2])  # helmet, by name
  with pytest.raises(FileNotFoundError, match=r'val: \.\./valid/images is .*valid/images, '
                                              r'which does not exist'):
    custom_data.read_yolo(str(root), 'val', None)
  (root / 'data.yaml').write_text("train: ../train/images\nnc: 3\nnames: ['head', 'helmet']\n")
  with pytest.raises(ValueError, match='nc is 3 but names lists 2 classes'):
    custom_data.yolo_class_names(str(root))
  (root / 'data.yaml').write_text("train: [../train/images\nnames: ['head']\n")
  with pytest.raises(ValueError, match=r'data.yaml, line \d+: not valid YAML'):
    custom_data.yolo_class_names(str(root))


def yolo_config(load_config, root):
  c = load_config('voc300')
  c.data.format, c.data.root = 'yolo', str(root)
  c.data.train_splits, c.data.eval_split = ('train',), 'val'
  return c


def test_yolo_class_names_and_num_classes_come_from_the_yaml(load_config, tmp_path):
  c = Task.of(yolo_config(load_config, yolo_dataset(tmp_path / 'yolo'))).config
  assert c.data.class_names == ('cat', 'dog') and c.model.num_classes == 3
  c.train.batch_size, c.data.max_boxes = 2, 4
  batch = next(iter(input_pipeline.train_dataset(c, 0, 1)))
  assert step_inputs.finished_images(batch, c).shape == (2, 300, 300, 3)
  ds, steps = input_pipeline.eval_dataset(c, 0, 1)
  labels = [b['labels'][b['mask']] for b in ds.as_numpy_iterator()]
  assert steps == 1 and np.concatenate(labels).tolist() == [[2]]  # v.txt: one dog


# --- model.num_classes ---------------------------------------------------------------

def test_num_classes_follows_the_class_names(load_config):
  c = load_config('voc300')
  assert config_lib.validate(c).model.num_classes == 21  # VOC's 20 + background
  c = load_config('voc300')
  c.data.class_names = CLASSES  # the preset's 21 is VOC's: the names decide
  assert config_lib.validate(c).model.num_classes == 3
  c = load_config('voc300')
  c.data.class_names, c.model.num_classes = CLASSES, None
  assert config_lib.validate(c).model.num_classes == 3
  c = load_config('voc300')
  c.data.name, c.model.num_classes = None, None
  with pytest.raises(ValueError, match='model.num_classes is not set and neither'):
    config_lib.validate(c)
  c = load_config('voc300')
  c.data.class_names, c.model.num_classes = CLASSES, 5
  with pytest.raises(ValueError, match=r'model.num_classes=5 but data.class_names has 2 names; '
                                       r'set model.num_classes=3'):
    config_lib.validate(c)


# --- end to end: train, evaluate, predict, fine-tune -----------------------------

def tiny(load_config, **data):
  c = synthetic.tiny_config(load_config('voc300'))
  c.model.num_classes = None  # from the class names
  c.data.update(data)
  c.train.num_steps, c.train.checkpoint_every = 2, 2
  c.eval.num_rendered = 2
  return c


def test_yolo_and_labelimg_datasets_train_evaluate_predict_and_fine_tune(load_config, tmp_path):
  yolo = yolo_dataset(tmp_path / 'yolo')
  c = tiny(load_config, format='yolo', root=str(yolo), train_splits=('train',), eval_split='val')
  out = workflows.run_training(c, str(tmp_path / 'run_yolo'), with_eval=True)
  assert out['step'] == 2 and set(out['result']['per_class_AP']) == {'cat', 'dog'}
  saved = workdirs.find_config(str(tmp_path / 'run_yolo'))
  assert saved.data.class_names == ('cat', 'dog') and saved.model.num_classes == 3
  assert out['result']['num_images'] == 1  # val.txt lists one image
  predicted = workflows.run_prediction(saved, str(tmp_path / 'run_yolo'),
                                       str(yolo / 'images' / 'train'), str(tmp_path / 'pred'))
  assert predicted['count'] == 2  # a.jpg and C.JPEG; the folder's sub/ is not searched

  folder = tmp_path / 'labelimg'
  labelimg_folder(folder / 'images', folder / 'annotations')
  c = tiny(load_config, format='voc_folder', root=str(folder), class_names=('bird', 'cat', 'dog'),
           train_splits=('train',), eval_split='val', val_fraction=0.4)
  c.model.init_checkpoint = str(tmp_path / 'run_yolo')  # other classes: all but the heads
  workdir = tmp_path / 'run_labelimg'
  workflows.run_training(c, str(workdir))
  recorded = json.loads((workdir / workflows.SPLIT_FILE).read_text())
  assert len(recorded['val']) == 2 and len(recorded['train']) == 3
  saved = workdirs.find_config(str(workdir))
  assert saved.data.split_file == str(workdir / workflows.SPLIT_FILE)
  for i in range(10):  # images added after training: evaluation keeps the recorded split
    jpeg(folder / 'images' / f'late_{i}.jpg')
  result = workflows.run_evaluation(saved, str(workdir))['result']
  assert result['num_images'] == 2
