"""Custom datasets: a Pascal VOC folder and a COCO JSON, with odd and corrupt images."""
import json
import logging as py_logging

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd_jax.data import custom_data, input_pipeline, sources
from ssd_jax.testing import step_inputs
from ssd_jax.testing.synthetic import write_voc_folder


@pytest.fixture
def voc_root(tmp_path):
  rgb = Image.fromarray(np.full((30, 40, 3), 200, np.uint8))
  gray = Image.fromarray(np.full((30, 40), 50, np.uint8), mode='L')     # saved as PNG
  rgba = Image.fromarray(np.full((30, 40, 4), 100, np.uint8), mode='RGBA')
  large = Image.fromarray(np.zeros((2400, 3200, 3), np.uint8))
  photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / 'whole.jpg', quality=90)
  truncated = (tmp_path / 'whole.jpg').read_bytes()[:-300]  # header intact, data cut
  write_voc_folder(tmp_path, [
      ('a', rgb, [('dog', False, 1, 1, 20, 15), ('cat', True, 10, 5, 40, 30)]),
      ('b', gray, [('person', False, 5, 5, 25, 25)]),
      ('c', rgba, []),
      ('d', b'this is not an image', [('dog', False, 1, 1, 20, 15)]),
      ('e', large, [('car', False, 1, 1, 1601, 1201)]),
      ('f', truncated, [('cat', False, 2, 2, 20, 20)]),
  ])
  return tmp_path


def test_voc_folder_records(voc_root, caplog):
  with caplog.at_level(py_logging.WARNING):
    records = custom_data.read_voc_folder(str(voc_root), 'trainval',
                                          ('cat', 'dog', 'person', 'car'))
  assert [r.image_id for r in records] == [0, 1, 2, 4, 5]  # d's header is unreadable: left out
  assert 'd.jpg: dropped unreadable images' in caplog.text
  np.testing.assert_allclose(records[0].boxes, [[0, 0, 19 / 40, 14 / 30], [9 / 40, 4 / 30, 39 / 40, 29 / 30]])
  np.testing.assert_array_equal(records[0].labels, [2, 1])
  np.testing.assert_array_equal(records[0].difficult, [False, True])
  assert records[2].boxes.shape == (0, 4)


def voc_config(load_config, root):
  c = load_config('voc300')
  c.data.format, c.data.root = 'voc_folder', str(root)
  c.data.class_names = ('cat', 'dog', 'person', 'car')
  c.model.num_classes = 5
  c.data.train_splits, c.data.eval_split = ('trainval',), 'trainval'
  return c


def test_odd_images_decode_and_corrupt_ones_are_reported_and_skipped(load_config, voc_root,
                                                                      caplog):
  source = input_pipeline.open_source(voc_config(load_config, voc_root), 'trainval')
  with caplog.at_level(py_logging.ERROR):
    examples = [jax.tree.map(np.asarray, source.example(tf.constant(i, tf.int64)))
                for i in list(range(5)) * 2]  # two passes over a, b, c, e, f
  assert [int(e['image_id']) for e in examples if e['ok']] == [0, 1, 2, 4] * 2
  assert all(e['image'].shape[-1] == 3 and e['image'].dtype == np.uint8 for e in examples)
  assert examples[1]['image'][0, 0].tolist() == [50, 50, 50]  # grayscale -> RGB
  assert examples[3]['image'].shape == (2400, 3200, 3)
  unreadable = [r for r in caplog.records if 'skipping unreadable image' in r.getMessage()]
  assert len(unreadable) == 1 and 'f.jpg' in unreadable[0].getMessage()  # once, not per pass


def test_voc_folder_through_the_pipeline(load_config, voc_root):
  c = voc_config(load_config, voc_root)
  c.train.batch_size, c.data.max_boxes = 2, 4
  batch = next(iter(input_pipeline.train_dataset(c, 0, 1)))
  assert step_inputs.finished_images(batch, c).shape == (2, 300, 300, 3)
  assert batch['labels'].shape == (2, 4)
  ds, steps = input_pipeline.eval_dataset(c, 0, 1)
  ids = [i for b in ds.as_numpy_iterator() for i, m in zip(b['image_id'], b['mask']) if m]
  assert steps == 3 and sorted(ids) == [0, 1, 2, 4]  # d left out at start, f at decoding


def test_unknown_class_and_missing_split_are_clear_errors(voc_root):
  with pytest.raises(ValueError, match=r'a.xml: object <name>dog</name> is not in data.class_names'):
    custom_data.read_voc_folder(str(voc_root), 'trainval', ('cat',))
  with pytest.raises(FileNotFoundError, match='ImageSets/Main/test.txt'):
    custom_data.read_voc_folder(str(voc_root), 'test', ('cat',))


def test_coco_json(tmp_path):
  (tmp_path / 'imgs').mkdir()
  Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(tmp_path / 'imgs' / 'x.png')
  data = {'images': [{'id': 42, 'file_name': 'x.png', 'width': 100, 'height': 50}],
          'categories': [{'id': 7, 'name': 'zebra'}, {'id': 2, 'name': 'ant'}],
          'annotations': [{'id': 1, 'image_id': 42, 'category_id': 7, 'bbox': [10, 5, 30, 20]},
                          {'id': 2, 'image_id': 42, 'category_id': 2, 'bbox': [0, 0, 100, 50],
                           'iscrowd': 1}]}
  (tmp_path / 'ann.json').write_text(json.dumps(data))
  records = custom_data.read_coco_json(str(tmp_path / 'ann.json'), str(tmp_path / 'imgs'), None)
  np.testing.assert_allclose(records[0].boxes, [[0.1, 0.1, 0.4, 0.5], [0, 0, 1, 1]])
  np.testing.assert_array_equal(records[0].labels, [2, 1])  # categories sorted by id: ant, zebra
  np.testing.assert_array_equal(records[0].difficult, [False, True])
  example = sources.RecordsSource(records, 'ann.json').example(tf.constant(0, tf.int64))
  assert example['image'].shape == (50, 100, 3) and example['image_id'] == 42


def test_a_voc_folder_without_class_names_has_its_tasks(load_config, voc_root):
  """The Task names a VOC folder's classes (data.name's label map) for its readers;
  a bare config without them is refused by name rather than guessed."""
  from ssd_jax import labels
  from ssd_jax.task import Task
  c = voc_config(load_config, voc_root)
  c.data.class_names, c.model.num_classes = None, None
  task = Task.of(c)
  assert task.class_names == labels.LABEL_MAPS['voc'] and len(task.class_names) == 20
  assert task.config.data.class_names == task.class_names and task.num_classes == 21
  assert c.data.class_names is None  # the caller's config is left as it was
  with pytest.raises(ValueError, match="voc_folder' with no data.class_names.*Task.of"):
    input_pipeline.open_source(c, 'trainval')
  first = input_pipeline.open_source(task.config, 'trainval').example(tf.constant(0, tf.int64))
  names = labels.LABEL_MAPS['voc']  # a.jpg holds a dog, then a cat
  assert first['labels'].numpy().tolist() == [names.index('dog') + 1, names.index('cat') + 1]
