"""Evaluation from checkpoints, the detector API and --mode=predict."""
import json
import pathlib
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest
from PIL import Image

from ssd_jax import detector, evaluate, export, images, sharding, train_loop
from ssd_jax import workdirs, workflows
from ssd_jax.data import input_pipeline
from ssd_jax.testing import commands, detections, runs, synthetic
from ssd_jax.task import Task


@pytest.fixture(scope='module')
def trained(tmp_path_factory, load_config):
  """A squares run trained with train_and_eval, evaluated after step 3 and at
  the end: (config, workdir, metrics at the end)."""
  root = tmp_path_factory.mktemp('squares')
  synthetic.squares_voc_folder(root, 12)
  config = synthetic.squares_config(load_config('voc300'), str(root), 4)
  config.eval.num_rendered = 3
  config.eval.every_steps = 3
  workdir = tmp_path_factory.mktemp('run')
  workflows.run_training(config, str(workdir), with_eval=True)
  end_of_training = json.loads((workdir / 'eval_4' / 'metrics.json').read_text())
  return config, workdir, end_of_training


def test_train_and_eval_writes_metrics_plots_and_pictures(trained):
  _, workdir, result = trained
  assert result['step'] == 4 and result['num_images'] == 12
  assert set(result['per_class_AP']) == set(synthetic.SQUARE_CLASSES)
  assert (workdir / 'eval_4' / 'pr_curves.png').stat().st_size > 0
  assert len(list((workdir / 'detections').glob('*.jpg'))) == 3
  assert (workdir / 'config.json').is_file()
  assert sorted(p.name for p in workdir.glob('eval_*')) == ['eval_3', 'eval_4']


def test_eval_from_the_checkpoint_reproduces_the_end_of_training_metrics(trained):
  config, workdir, end_of_training = trained
  again = workflows.run_evaluation(workdirs.find_config(str(workdir)), str(workdir))['result']
  assert again['scalars']['mAP'] == pytest.approx(end_of_training['scalars']['mAP'], abs=1e-9)
  for name, ap in end_of_training['per_class_AP'].items():
    assert again['per_class_AP'][name] == pytest.approx(ap, abs=1e-9)


def test_detector_api_matches_the_evaluation_path(trained):
  config, workdir, _ = trained
  det = detector.Detector.from_checkpoint(str(workdir / 'checkpoints'))  # config.json found
  params, _ = runs.restore_params(Task.of(config), str(workdir))
  evaluator = evaluate.make_evaluator(Task.of(config))
  evaluate.detect_split(Task.of(config), params, evaluator)
  found = evaluator.detections
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
  out = workflows.run_prediction(config, str(workdir), str(folder), str(tmp_path / 'out'))
  assert out['count'] == 2 and out['skipped'] == [str(folder / 'broken.jpg')]
  results = json.loads((tmp_path / 'out' / 'detections.json').read_text())
  assert {r['image_id'] for r in results} <= {'grey.png', 'gray_mode.jpg'}
  for r in results:
    x, y, w, h = r['bbox']
    assert r['category_id'] in (1, 2) and 0 <= r['score'] <= 1 and w >= 0 and h >= 0
  assert sorted(p.name for p in (tmp_path / 'out' / 'images').iterdir()) == \
      ['gray_mode.jpg', 'grey.png']  # the same relative names and formats


def test_clear_errors(trained, tmp_path, load_config):
  config, workdir, _ = trained
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    runs.restore_params(Task.of(config), str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no checkpoint for step 99'):
    runs.restore_params(Task.of(config), str(workdir), step=99)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no images'):
    workflows.find_images(str(tmp_path / 'empty'))
  (tmp_path / 'bad.png').write_bytes(b'nope')
  with pytest.raises(ValueError, match='cannot read image .*bad.png'):
    images.read_image(str(tmp_path / 'bad.png'))
  with pytest.raises(ValueError, match='could be read'):
    workflows.run_prediction(config, str(workdir), str(tmp_path / 'bad.png'), str(tmp_path / 'o'))
  with pytest.raises(FileNotFoundError, match='no config.json'):
    workdirs.find_config(str(tmp_path))


def test_fine_tuning_on_new_classes_restores_all_but_the_class_heads(trained, tmp_path,
                                                                     load_config):
  config, workdir, _ = trained
  c = synthetic.squares_config(load_config('voc300'), config.data.root, 0)
  c.data.class_names, c.model.num_classes = synthetic.SQUARE_CLASSES + ('blue',), 4
  c.model.init_checkpoint = str(workdir)
  fresh = flax.traverse_util.flatten_dict(jax.device_get(
      runs.train(c, str(tmp_path / 'fine_tune')).params))
  saved, _ = runs.restore_params(Task.of(config), str(workdir))
  saved = flax.traverse_util.flatten_dict(jax.device_get(saved))
  assert fresh.keys() == saved.keys()
  for key, value in fresh.items():
    if key[-2].endswith('_conf'):  # 4 classes now: shapes differ, freshly initialised
      assert value.shape != saved[key].shape
    else:
      np.testing.assert_array_equal(value, saved[key], err_msg='/'.join(key))
  c.model.width = 0.25  # no kernel matches
  with pytest.raises(ValueError, match='shares no convolution kernel'):
    runs.train(c, str(tmp_path / 'mismatch'))


TF_BLOCKED_DETECT = '''
import json, sys
# As on a machine without them: `import` fails, importlib.util.find_spec answers None.
for name in ('tensorflow', 'tensorflow_datasets'):
  sys.modules[name] = None
import numpy as np
from ssd_jax import detector, images
det = detector.Detector.from_checkpoint(sys.argv[1])
found = det.detect([images.read_image(sys.argv[2])])[0]
assert not [m for m, v in sys.modules.items() if v is not None and m.startswith('tensorflow')]
print(json.dumps({k: np.asarray(v).tolist() for k, v in found.items()}))
'''


def test_detector_runs_without_tensorflow(trained, tmp_path):
  """Importing ssd_jax.detector and detecting needs neither TensorFlow nor TFDS;
  the detections equal those of the same Detector in this (TensorFlow) process."""
  _, workdir, _ = trained
  pixels = np.random.default_rng(5).integers(0, 256, (70, 110, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'in.png')
  run = subprocess.run([sys.executable, '-c', TF_BLOCKED_DETECT, str(workdir),
                        str(tmp_path / 'in.png')], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  theirs = json.loads(run.stdout.strip().splitlines()[-1])
  mine = detector.Detector.from_checkpoint(str(workdir)).detect([pixels])[0]
  assert len(theirs['scores']) == len(mine['scores']) > 0
  np.testing.assert_allclose(theirs['scores'], mine['scores'], rtol=1e-6)
  np.testing.assert_allclose(theirs['boxes'], mine['boxes'], atol=1e-4)


def test_predict_command_runs_without_tensorflow(trained, tmp_path):
  """--mode=predict imports neither TensorFlow nor TFDS (as on a machine with only
  JAX): its detections.json holds this process's Detector's detections."""
  _, workdir, _ = trained
  pixels = np.random.default_rng(6).integers(0, 256, (70, 110, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'in.png')
  main = pathlib.Path(__file__).resolve().parent.parent / 'ssd_jax' / 'main.py'
  run = subprocess.run([sys.executable, '-m', 'ssd_jax.testing.without_tensorflow', str(main),
                        '--mode=predict', f'--workdir={workdir}', f'--input={tmp_path}/in.png',
                        f'--output={tmp_path}/out'], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0 and 'tensorflow imported: False' in run.stdout, run.stderr[-3000:]
  theirs = detections.from_coco_results(
      json.loads((tmp_path / 'out' / 'detections.json').read_text()), 'in.png')
  det = detector.Detector.from_checkpoint(str(workdir))
  mine = det.detect([pixels])[0]
  mine['classes'] = np.asarray(det.category_ids)[mine['classes'] - 1]  # as the file numbers them
  assert len(theirs['scores']) == len(mine['scores']) > 0
  # The file's scores have 5 decimals; its x, y, w and h 2 (x + w within 0.01).
  assert not detections.unmatched(theirs, mine, score_tol=6e-6, box_tol=0.011)


def test_export_scores_its_artifact_and_eval_mode_scores_it_again(trained, tmp_path):
  """docs/export.md's float TFLite export and its --mode=eval of the artifact, on a
  squares run as /tmp/voc300: the export's accuracy line gives the artifact and the
  checkpoint on the whole eval split (12 images); --mode=eval on the artifact folder
  gives the same figure, and the checkpoint's equals the batched evaluation's."""
  config, workdir, _ = trained
  folder = commands.scratch(tmp_path)
  (folder / 'voc300').symlink_to(workdir)
  printed = commands.run(commands.find('--format=tflite --output=/tmp/voc300_export/tflite',
                                       'docs/export.md'), folder)
  out = folder / 'voc300_export' / 'tflite'
  accuracy = json.loads((out / 'export.json').read_text())['accuracy']
  assert accuracy['images'] == 12 and accuracy['metric'] == 'mAP'
  assert (f'mAP on 12 eval images: artifact {accuracy["artifact"]:.4f}, checkpoint '
          f'{accuracy["checkpoint"]:.4f}') in printed
  batched = workflows.run_evaluation(workdirs.find_config(str(workdir)), str(workdir))['result']
  assert accuracy['checkpoint'] == pytest.approx(batched['scalars']['mAP'], abs=2e-3)
  again = commands.run(commands.find('--mode=eval --workdir=/tmp/voc300_export/tflite',
                                     'docs/export.md'), folder)
  assert f'mAP    {accuracy["artifact"]:.4f}  (12 images)' in again
  metrics = json.loads((out / 'eval' / 'metrics.json').read_text())
  assert metrics['scalars']['mAP'] == accuracy['artifact']
  with pytest.raises(ValueError, match=r'--step=2: \S+ is an exported artifact, which holds one'):
    workflows.run_evaluation(workdirs.find_config(str(out)), str(out), step=2)


def test_render_draws_the_evaluation_detections_on_the_eval_images(trained, tmp_path):
  config, _, _ = trained
  first, second = input_pipeline.decoded_eval_examples(config, 2).as_numpy_iterator()
  h, w = first['image'].shape[:2]
  x0, y0, x1, y1 = w // 4, h // 4, 3 * w // 4, 3 * h // 4
  detections = {int(first['image_id']): {'boxes': np.array([[x0, y0, x1, y1]], np.float32),
                                         'scores': np.array([0.9]), 'classes': np.array([2])}}
  evaluate.render(Task.of(config), detections, str(tmp_path))
  assert len(list(tmp_path.glob('*.jpg'))) == config.eval.num_rendered
  drawn = np.asarray(Image.open(tmp_path / f'{first["image_id"]}.jpg'), float)
  change = np.abs(drawn - first['image']).sum(-1)
  edge = change[(y0 + y1) // 2, x0 - 1:x0 + 2].max()  # the box's left side, halfway down
  far = change[:y0 // 2, :x0 // 2].mean()  # a corner away from box and label
  assert edge > 100 and far < 15, (edge, far)
  plain = np.asarray(Image.open(tmp_path / f'{second["image_id"]}.jpg'), float)
  assert np.abs(plain - second['image']).sum(-1).mean() < 15  # no detections: the photo alone


def test_a_runs_evaluations_share_one_compiled_step(trained):
  config, _, _ = trained
  task, mesh = Task.of(config), sharding.make_mesh()
  assert evaluate.jit_eval_step(task, mesh) is evaluate.jit_eval_step(task, mesh)
  assert evaluate.jit_eval_step(Task.of(config), mesh) is not evaluate.jit_eval_step(task, mesh)


def test_a_run_and_an_export_open_the_eval_split_once(trained, tmp_path, monkeypatch):
  """Two evaluations and the drawing at the end of a run read the eval split
  the run opened at its start; an export scores the split its checks opened."""
  config, _, _ = trained
  c = config.copy_and_resolve_references()
  c.train.num_steps, c.eval.every_steps = 2, 1
  opened = []
  open_source = input_pipeline.open_source
  monkeypatch.setattr(input_pipeline, 'open_source',
                      lambda config, spec: opened.append(spec) or open_source(config, spec))
  workdir = tmp_path / 'run'
  train_loop.train(Task.of(c), str(workdir), with_eval=True, pictures=str(tmp_path / 'drawn'))
  assert sorted(p.name for p in workdir.glob('eval_*')) == ['eval_1', 'eval_2']
  assert len(list((tmp_path / 'drawn').glob('*.jpg'))) == c.eval.num_rendered
  assert opened == ['trainval', 'trainval']  # the training split, then the eval split
  opened.clear()
  export.export(str(workdir), 'jax', str(tmp_path / 'jax'), evaluate=True, eval_images=2)
  assert json.loads((tmp_path / 'jax' / 'export.json').read_text())['accuracy']['images'] == 2
  assert opened == ['trainval']


def test_an_export_whose_scoring_fails_keeps_the_artifact_and_says_how_to_score_it(
    trained, tmp_path, monkeypatch):
  _, workdir, _ = trained

  def broken(*args, **kwargs):
    raise OSError('the eval images went away')

  monkeypatch.setattr(evaluate, 'evaluate_detectors', broken)
  out = tmp_path / 'jax'
  with pytest.raises(export.ScoringError, match=(
      f'wrote {out}, but scoring it on the eval split failed: the eval images went away. '
      f'Score it again with: python -m ssd_jax.main --mode=eval --workdir={out}')):
    export.export(str(workdir), 'jax', str(out), evaluate=True, eval_images=2)
  assert (out / export.JAX_FILE).is_file() and (out / 'export.json').is_file()
