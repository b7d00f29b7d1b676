"""Evaluation from checkpoints, the detector API and --mode=predict."""
import json

import flax
import jax
import numpy as np
import pytest
from PIL import Image

import synthetic
from ssd_jax import detector, evaluate, input_pipeline, loop, workflows


@pytest.fixture(scope='module')
def trained(tmp_path_factory, load_config):
  """A squares run trained with train_and_eval: (config, workdir, metrics at the end)."""
  root = tmp_path_factory.mktemp('squares')
  synthetic.squares_voc_folder(root, 12)
  config = synthetic.squares_config(load_config('voc300'), str(root), 4)
  config.eval.num_rendered = 3
  workdir = tmp_path_factory.mktemp('run')
  workflows.train(config, str(workdir), with_eval=True)
  end_of_training = json.loads((workdir / 'eval_4' / 'metrics.json').read_text())
  return config, workdir, end_of_training


def test_train_and_eval_writes_metrics_plots_and_pictures(trained):
  _, workdir, result = trained
  assert result['step'] == 4 and result['num_images'] == 12
  assert set(result['AP']) == set(synthetic.SQUARE_CLASSES)
  assert (workdir / 'eval_4' / 'pr_curves.png').stat().st_size > 0
  assert len(list((workdir / 'detections').glob('*.jpg'))) == 3
  assert (workdir / 'config.json').is_file()


def test_eval_from_the_checkpoint_reproduces_the_end_of_training_metrics(trained):
  config, workdir, end_of_training = trained
  again = workflows.evaluate_checkpoint(evaluate.find_config(str(workdir)), str(workdir))
  assert again['mAP'] == pytest.approx(end_of_training['mAP'], abs=1e-9)
  for name, ap in end_of_training['AP'].items():
    assert again['AP'][name] == pytest.approx(ap, abs=1e-9)


def test_detector_api_matches_the_evaluation_path(trained):
  config, workdir, _ = trained
  det = detector.Detector.from_checkpoint(str(workdir / 'checkpoints'))  # config.json found
  params, _ = evaluate.restore_params(config, str(workdir))
  _, found = evaluate.detect_split(config, params)
  for example in input_pipeline.decoded_eval_examples(config, 2).as_numpy_iterator():
    mine = det.detect([example['image']])[0]
    theirs = found[int(example['image_id'])]
    assert len(mine['scores']) == len(theirs['scores']) > 0
    np.testing.assert_allclose(mine['scores'], theirs['scores'], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mine['boxes'], theirs['boxes'], atol=1e-2)
    assert set(mine['names']) <= set(synthetic.SQUARE_CLASSES)


def test_predict_writes_coco_results_and_pictures_and_skips_bad_files(trained, tmp_path):
  config, workdir, _ = trained
  folder = tmp_path / 'in'
  folder.mkdir()
  Image.new('RGB', (120, 80), (128, 128, 128)).save(folder / 'grey.png')
  Image.new('L', (50, 70), 90).save(folder / 'gray_mode.jpg')
  (folder / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  out = workflows.predict(config, str(workdir), str(folder), str(tmp_path / 'out'))
  assert out['count'] == 2 and out['skipped'] == [str(folder / 'broken.jpg')]
  results = json.loads((tmp_path / 'out' / 'detections.json').read_text())
  assert {r['image_id'] for r in results} <= {'grey.png', 'gray_mode.jpg'}
  for r in results:
    x, y, w, h = r['bbox']
    assert r['category_id'] in (1, 2) and 0 <= r['score'] <= 1 and w >= 0 and h >= 0
  assert sorted(p.name for p in (tmp_path / 'out' / 'images').iterdir()) == \
      ['gray_mode.jpg', 'grey.jpg']


def test_clear_errors(trained, tmp_path, load_config):
  config, workdir, _ = trained
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    evaluate.restore_params(config, str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no checkpoint for step 99'):
    evaluate.restore_params(config, str(workdir), step=99)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no images'):
    detector.find_images(str(tmp_path / 'empty'))
  (tmp_path / 'bad.png').write_bytes(b'nope')
  with pytest.raises(ValueError, match='cannot read image .*bad.png'):
    detector.read_image(str(tmp_path / 'bad.png'))
  with pytest.raises(ValueError, match='could be read'):
    workflows.predict(config, str(workdir), str(tmp_path / 'bad.png'), str(tmp_path / 'o'))
  with pytest.raises(FileNotFoundError, match='no config.json'):
    evaluate.find_config(str(tmp_path))


def test_fine_tuning_on_new_classes_restores_all_but_the_class_heads(trained, tmp_path,
                                                                     load_config):
  config, workdir, _ = trained
  c = synthetic.squares_config(load_config('voc300'), config.data.root, 0)
  c.data.class_names, c.model.num_classes = synthetic.SQUARE_CLASSES + ('blue',), 4
  c.model.init_checkpoint = str(workdir)
  fresh = flax.traverse_util.flatten_dict(jax.device_get(
      loop.train(c, str(tmp_path / 'fine_tune')).params))
  saved, _ = evaluate.restore_params(config, str(workdir))
  saved = flax.traverse_util.flatten_dict(jax.device_get(saved))
  assert fresh.keys() == saved.keys()
  for key, value in fresh.items():
    if key[-2].endswith('_conf'):  # 4 classes now: shapes differ, freshly initialised
      assert value.shape != saved[key].shape
    else:
      np.testing.assert_array_equal(value, saved[key], err_msg='/'.join(key))
  c.model.width = 0.25  # no kernel matches
  with pytest.raises(ValueError, match='shares no convolution kernel'):
    loop.train(c, str(tmp_path / 'mismatch'))
