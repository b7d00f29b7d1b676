"""What each `--mode` of main.py does, as functions that return what they made.

Tests and notebooks call these; main.py prints their results. Training and
evaluation import TensorFlow (their data pipelines) when called; prediction
never does, so `--mode=predict` also runs where only JAX is installed.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional

import jax
from absl import logging

from ssd_jax import artifacts, checkpoints, detector, drawing, images, metrics
from ssd_jax.task import Task
from ssd_jax.paths import path as run_path

# In the workdir: the train/val split made of a voc_folder without ImageSets.
SPLIT_FILE = 'data_split.json'


def record_split_in(config, workdir: str):
  """Points data.split_file at <workdir>/SPLIT_FILE (unless set) for a voc_folder,
  so that training records the split it makes there and evaluation reads it back
  (see custom_data.recorded_split). Returns the config, changed in place."""
  if config.data.format == 'voc_folder' and not config.data.split_file:
    config.data.split_file = str(run_path(workdir) / SPLIT_FILE)
  return config


def run_training(config, workdir: str, with_eval: bool = False) -> dict:
  """--mode=train / train_and_eval.

  Returns:
    {'state': the final TrainState, 'step': int} and, with evaluation, the last
    evaluation 'result' (see metrics.Evaluator), its 'eval_dir' and the folder
    of drawn detections ('pictures').
  """
  from ssd_jax import evaluate, train_loop  # TensorFlow: the data pipelines
  task = Task.of(record_split_in(config, workdir))
  logging.info('config:\n%s', task.config)
  pictures = str(run_path(workdir) / 'detections')
  state, result = train_loop.train(task, workdir, with_eval, pictures)
  out = {'state': state, 'step': int(state.step)}
  if with_eval and jax.process_index() == 0:
    out.update(eval_dir=evaluate.eval_dir(workdir, out['step']), result=result,
               pictures=pictures)
  return out


def run_evaluation(config, workdir: str, step: Optional[int] = None) -> dict:
  """--mode=eval: restores the inference variables only and evaluates the eval split;
  a workdir that `ssd_jax.export` wrote (it holds export.json) has its artifact
  evaluated instead (see run_artifact_evaluation).

  Returns:
    {'result': see metrics.Evaluator, 'step': int, 'eval_dir': where it was written}.
  """
  if os.path.isfile(os.path.join(workdir, artifacts.INFO_FILE)):
    if step is not None:
      raise ValueError(f'--step={step}: {workdir} is an exported artifact, which holds one '
                       f'step; drop --step, or evaluate the training workdir it came from.')
    return run_artifact_evaluation(config, workdir)
  from ssd_jax import evaluate  # TensorFlow: the data pipeline
  task = Task.of(record_split_in(config, workdir))
  variables, step = checkpoints.restore_variables(task, workdir, step)
  logging.info('evaluating step %d of %s', step, workdir)
  result = evaluate.evaluate_and_report(task, variables, workdir, step)
  return {'result': result, 'step': step, 'eval_dir': evaluate.eval_dir(workdir, step)}


def run_artifact_evaluation(config, folder: str) -> dict:
  """--mode=eval on an export folder: its artifact, one image at a time, on the
  whole eval split (evaluate.evaluate_detectors); the report goes to folder/eval.
  'step' is the checkpoint step the artifact was exported from."""
  from ssd_jax import evaluate  # TensorFlow: the data pipeline
  det = detector.Detector.from_exported(folder)
  (result,) = evaluate.evaluate_detectors(Task.of(config), [det])
  step, out_dir = det.info.get('step'), os.path.join(folder, 'eval')
  evaluate.report(result, out_dir, step)
  return {'result': result, 'step': step, 'eval_dir': out_dir}


def find_images(spec: str, flag: str = '--input') -> list[str]:
  """An image file, a folder (its images, sorted) or a glob -> image paths;
  errors name `spec` as the command-line flag `flag` that gave it."""
  if os.path.isdir(spec):
    paths = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                   if n.lower().endswith(images.IMAGE_EXTENSIONS))
    if not paths:
      raise FileNotFoundError(f'folder {spec} holds no images (looked for '
                              f'{", ".join(images.IMAGE_EXTENSIONS)}); point {flag} at images.')
    return paths
  if os.path.isfile(spec):
    return [spec]
  paths = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f'{flag}={spec} matches no file; give an image, a folder or a '
                            f'glob such as "photos/*.jpg".')
  return paths


def relative_names(paths: list[str], spec: str) -> list[str]:
  """Names that tell the images apart: paths relative to the folder `spec` names,
  else to the deepest folder holding them all (a/x.jpg and b/x.jpg, p.jpg and
  p.png stay distinct)."""
  base = spec if os.path.isdir(spec) else os.path.commonpath(
      [os.path.dirname(os.path.abspath(p)) for p in paths])
  return [os.path.relpath(os.path.abspath(p), os.path.abspath(base)) for p in paths]


def predict_files(det: detector.Detector, spec: str, out_dir: str,
                  min_draw_score: float = 0.4) -> dict:
  """Detects on the images `spec` names; writes detections.json (COCO results,
  image_id = the image's relative name, see relative_names) and drawn copies
  at the same relative names under out_dir/images.

  Unreadable images are logged and listed under "skipped"; if none can be read,
  an error. Returns {'detections': path, 'images': folder, 'count', 'skipped'}.
  """
  paths = find_images(spec)
  found, skipped = {}, []
  for path, name in zip(paths, relative_names(paths, spec)):
    try:
      image = images.read_image(path)
    except ValueError as e:
      logging.error('%s', e)
      skipped.append(path)
      continue
    result = det.detect([image])[0]
    found[name] = result
    picture = os.path.join(out_dir, 'images', name)
    os.makedirs(os.path.dirname(picture), exist_ok=True)
    drawing.draw(image, result, min_draw_score).save(picture, quality=92)
  if not found:
    raise ValueError(f'none of the {len(paths)} images of --input={spec} could be read '
                     f'({", ".join(skipped[:5])}...); see the errors above.')
  out = os.path.join(out_dir, 'detections.json')
  with open(out, 'w') as f:
    json.dump(metrics.coco_results(found, det.category_ids), f)
  return {'detections': out, 'images': os.path.join(out_dir, 'images'),
          'count': len(found), 'skipped': skipped}


def run_prediction(config, workdir: str, spec: str, out_dir: Optional[str] = None,
                   step: Optional[int] = None) -> dict:
  """--mode=predict: detections of the images `spec` names, as JSON and pictures
  (see predict_files for what it returns)."""
  det = detector.Detector.from_checkpoint(workdir, config, step)
  return predict_files(det, spec, out_dir or os.path.join(workdir, 'predictions'),
                       config.eval.draw_score)
