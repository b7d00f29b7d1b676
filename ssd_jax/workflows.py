"""What each `--mode` of main.py does, as functions tests and notebooks can call."""
from __future__ import annotations

import os
from typing import Optional

import jax
from absl import logging

from ssd_jax import detector, evaluate, input_pipeline, loop


def render_eval_images(config, params, out_dir: str) -> str:
  """Draws detections on the first eval.num_rendered eval images into out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  det = detector.Detector(config, params)
  for example in input_pipeline.decoded_eval_examples(
      config, config.eval.num_rendered).as_numpy_iterator():
    found = det.detect([example['image']])[0]
    detector.draw(example['image'], found, config.eval.draw_score).save(
        os.path.join(out_dir, f'{example["image_id"]}.jpg'), quality=92)
  return out_dir


def train(config, workdir: str, with_eval: bool = False):
  """--mode=train / train_and_eval; the latter ends by drawing detections."""
  state = loop.train(config, workdir, with_eval=with_eval)
  if with_eval and jax.process_index() == 0:
    pictures = render_eval_images(config, state.params, os.path.join(workdir, 'detections'))
    step = int(state.step)
    print(f'metrics: {os.path.join(loop.eval_dir(workdir, step), "metrics.json")}\n'
          f'precision-recall plots: {loop.eval_dir(workdir, step)}\n'
          f'detections drawn on eval images: {pictures}', flush=True)
  return state


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None) -> dict:
  """--mode=eval: restores parameters only and evaluates the eval split."""
  params, step = evaluate.restore_params(config, workdir, step)
  logging.info('evaluating step %d of %s', step, workdir)
  result = loop.run_eval(config, params, workdir, step)
  if jax.process_index() == 0:
    print(f'metrics: {os.path.join(loop.eval_dir(workdir, step), "metrics.json")}', flush=True)
  return result


def predict(config, workdir: str, spec: str, out_dir: Optional[str] = None,
            step: Optional[int] = None) -> dict:
  """--mode=predict: detections of the images `spec` names, as JSON and pictures."""
  det = detector.Detector.from_checkpoint(workdir, config, step)
  out = detector.predict(det, spec, out_dir or os.path.join(workdir, 'predictions'),
                         config.eval.draw_score)
  print(f'{out["count"]} images: detections in {out["detections"]}, pictures in '
        f'{out["images"]}' + (f'; skipped {len(out["skipped"])} unreadable' if out['skipped']
                               else ''), flush=True)
  return out
