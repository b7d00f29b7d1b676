"""Evaluation: detect over the eval split, score with the config's evaluator, report.

`evaluate(task, variables)` runs the jitted detector over the config's eval
split on every device (batch sharded, results replicated so each host holds
them all), converts detections and ground truth to pixels and feeds them to
the evaluator of eval.metric (metrics.VocEvaluator or metrics.CocoEvaluator),
whose result has one shape for every metric. `evaluate_and_report` also writes
`<workdir>/eval_<step>/` (metrics.json, pr_curves.png) and TensorBoard scalars,
and can draw its detections on the first eval images (`render`).
"""
from __future__ import annotations

import functools
import json
from typing import Optional, Sequence

import jax
import numpy as np
from absl import logging

from ssd_jax import builders, drawing, metrics, paths, postprocess, sharding, xla_cpu
from ssd_jax.data import input_pipeline, sources


def eval_dir(workdir: str, step: int) -> str:
  """Where the evaluation of `step` writes its files (a local path or a URL)."""
  return str(paths.path(workdir) / f'eval_{step}')


def make_evaluator(task) -> metrics.Evaluator:
  """The evaluator of the task's eval.metric, with its class names."""
  metric = task.config.eval.metric
  if metric == 'coco':
    return metrics.CocoEvaluator(task.class_names, task.category_ids)
  return metrics.VocEvaluator(task.class_names, use_07=metric == 'voc07')


def _eval_step(variables, pixels, anchors, model, config) -> postprocess.Detections:
  return postprocess.network_detections(variables, pixels, model, anchors, config)


@functools.lru_cache(maxsize=4)
def jit_eval_step(task, mesh):
  """Detections of a global batch of pixels (sharded), replicated on every host.
  One per task and mesh: a run's evaluations compile it once."""
  return xla_cpu.jit(functools.partial(_eval_step, model=task.model, config=task.config),
                     task.config,
                     in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh),
                                   sharding.replicated(mesh)),
                     out_shardings=sharding.replicated(mesh))


def _to_pixels(boxes: np.ndarray, size) -> np.ndarray:
  h, w = size
  return boxes * np.array([w, h, w, h], np.float64)


def _add_batch(dets: postprocess.Detections, batch: dict, evaluator: metrics.Evaluator) -> None:
  """Adds this host's real examples (mask) of a batch, in pixels, by image id.

  dets: this host's rows of the batch's detections; batch: the host's eval
  batch with its whole ground truth (see input_pipeline).
  """
  for i in np.nonzero(batch['mask'])[0]:
    real = batch['labels'][i] > 0
    size = batch['original_size'][i]
    valid = dets.valid[i]
    evaluator.add(int(batch['image_id'][i]),
                  {'boxes': _to_pixels(batch['boxes'][i][real], size),
                   'labels': batch['labels'][i][real], 'difficult': batch['difficult'][i][real]},
                  {'boxes': _to_pixels(dets.boxes[i][valid], size),
                   'scores': dets.scores[i][valid], 'classes': dets.classes[i][valid]})


def detect_split(task, variables, evaluator: metrics.Evaluator, mesh=None,
                 source: Optional[sources.Source] = None) -> None:
  """Adds ground truth and detections of every eval image, once, to `evaluator`.

  Each host reads its share of the split; the images go to the devices, the
  ground truth stays on the host (whole, never padded to a size), and the
  hosts' collections are merged at the end. variables: see evaluate. source:
  input_pipeline.eval_source(task.config) when already opened.
  """
  config = task.config
  variables = builders.inference_variables(variables)
  mesh = mesh or sharding.make_mesh()
  host_batch = sharding.check_mesh_batch(config.train.batch_size, mesh)
  anchors = jax.device_put(task.default_boxes, sharding.replicated(mesh))
  data, steps = input_pipeline.host_eval_dataset(  # errors before compiling
      config, source or input_pipeline.eval_source(config), jax.process_index(), host_batch)
  step = jit_eval_step(task, mesh)
  mine = sharding.host_rows(config.train.batch_size)
  for batch in data.take(steps).as_numpy_iterator():
    images = sharding.global_batch({'image': batch['image']}, mesh)['image']
    dets = jax.tree.map(lambda x: x[mine], jax.device_get(step(variables, images, anchors)))
    _add_batch(dets, batch, evaluator)
  if jax.process_count() > 1:  # every host then holds every image (its own merge is a no-op)
    evaluator.merge(sharding.gather_objects((evaluator.truths, evaluator.detections)))


def run_evaluator(task, variables, mesh=None,
                  source: Optional[sources.Source] = None) -> metrics.Evaluator:
  """The task's evaluator (make_evaluator) holding the ground truth and the
  detections (pixels, by image id) of every eval image; variables and source:
  see evaluate and detect_split."""
  evaluator = make_evaluator(task)
  detect_split(task, variables, evaluator, mesh, source)
  logging.info('evaluated %d images, %d detections', len(evaluator.truths),
               sum(len(d['scores']) for d in evaluator.detections.values()))
  return evaluator


def evaluate(task, variables, mesh=None) -> dict:
  """Scores a model on its task's eval split; see metrics.Evaluator for the result.

  task: an ssd_jax.task.Task. variables: a train state, restored variables or
  bare parameters (what builders.inference_variables takes; the moving average
  when there is one).
  """
  return run_evaluator(task, variables, mesh).result()


def evaluate_detectors(task, detectors: Sequence, count: Optional[int] = None,
                       source: Optional[sources.Source] = None) -> list[dict]:
  """Scores anything with a Detector's `detect` (a Detector, an exported
  artifact) on the first `count` images of the task's eval split (all by
  default), one image at a time on this host, with `evaluate`'s metric: one
  result per detector (see metrics.Evaluator), from one pass over the images.
  source: see detect_split."""
  evaluators = [make_evaluator(task) for _ in detectors]
  examples = input_pipeline.decoded_eval_examples(task.config, count, source)
  for ex in examples.as_numpy_iterator():
    if not ex['ok']:
      continue
    real, size = ex['labels'] > 0, ex['image'].shape[:2]
    truth = {'boxes': _to_pixels(ex['boxes'][real], size), 'labels': ex['labels'][real],
             'difficult': ex['difficult'][real]}
    for det, evaluator in zip(detectors, evaluators):
      found = det.detect([ex['image']])[0]
      evaluator.add(int(ex['image_id']), truth,
                    {k: found[k] for k in ('boxes', 'scores', 'classes')})
  return [evaluator.result() for evaluator in evaluators]


def headline(result: dict) -> tuple[str, float]:
  """The result's headline metric: ('mAP', value) for VOC, ('AP', value) for COCO."""
  return result['headline'], result['scalars'][result['headline']]


def table(result: dict) -> str:
  """A per-class table of AP, the headline number and the other scalars."""
  per_class = result['per_class_AP']
  width = max([len(n) for n in per_class] + [5])
  lines = [f'{"class":<{width}}  AP']
  lines += [f'{name:<{width}}  {ap:.4f}' for name, ap in per_class.items()]
  name, value = headline(result)
  lines.append(f'{name:<{width}}  {value:.4f}  ({result["num_images"]} images)')
  lines += [f'{k:<{width}}  {v:.4f}' for k, v in result['scalars'].items() if k != name]
  return '\n'.join(lines)


def report(result: dict, out_dir: str, step: Optional[int] = None) -> str:
  """Writes metrics.json and pr_curves.png into out_dir (a local path or a URL);
  returns the table."""
  text = table(result)
  figure = plot_curves(result['curves'], result['per_class_AP']) if result['curves'] else None
  serialisable = {k: v for k, v in result.items() if k != 'curves'}
  serialisable['step'] = step
  folder = paths.path(out_dir)
  folder.mkdir(parents=True, exist_ok=True)
  # a class without ground truth: NaN
  paths.write_text_atomic(folder / 'metrics.json', json.dumps(serialisable, indent=2))
  if figure is not None:
    with (folder / 'pr_curves.png').open('wb') as f:
      figure.savefig(f, format='png', dpi=80)
  return text


def write_summaries(writer, result: dict, step: int) -> None:
  """Every scalar of the result as eval/<name> in TensorBoard."""
  import tensorflow as tf  # the summary writer; TensorFlow already feeds evaluation
  with writer.as_default(step=step):
    for name, value in result['scalars'].items():
      tf.summary.scalar(f'eval/{name}', value)
  writer.flush()


def evaluate_and_report(task, variables, workdir: str, step: int, writer=None,
                        mesh=None, pictures: Optional[str] = None,
                        source: Optional[sources.Source] = None) -> dict:
  """`evaluate`, then summaries and (on host 0) `report` into eval_dir(workdir,
  step) and, when `pictures` names a folder, these detections drawn there
  (`render`); returns the result. source: see detect_split."""
  evaluator = run_evaluator(task, variables, mesh, source)
  result = evaluator.result()
  if writer:
    write_summaries(writer, result, step)
  if jax.process_index() == 0:
    name, value = headline(result)
    out_dir = eval_dir(workdir, step)
    report(result, out_dir, step)
    logging.info('evaluation at step %d: %s %.4f (%s)', step, name, value, out_dir)
    if pictures:
      render(task, evaluator.detections, pictures, source)
  return result


def render(task, detections: dict, out_dir: str,
           source: Optional[sources.Source] = None) -> str:
  """Draws `detections` (by image id: boxes f32[N, 4] pixels xyxy, scores,
  classes, as an evaluator holds them) on the readable ones of the first
  eval.num_rendered eval images, scores from eval.draw_score up, into
  out_dir/<image id>.jpg (a local folder or a URL); returns out_dir. source:
  see detect_split."""
  e, none = task.config.eval, {'boxes': np.zeros((0, 4)), 'scores': [], 'classes': []}
  examples = input_pipeline.decoded_eval_examples(task.config, e.num_rendered, source)
  folder = paths.path(out_dir)
  folder.mkdir(parents=True, exist_ok=True)
  for example in examples.as_numpy_iterator():
    if not example['ok']:
      continue  # unreadable: reported where the split was read, and not evaluated
    found = detections.get(int(example['image_id']), none)
    found = dict(found, names=[task.class_names[c - 1] for c in found['classes']])
    with (folder / f'{example["image_id"]}.jpg').open('wb') as f:
      drawing.draw(example['image'], found, e.draw_score).save(f, format='JPEG', quality=92)
  return out_dir


def plot_curves(curves: dict, ap: Optional[dict] = None):
  """One precision-recall panel per class, in a grid: a matplotlib Figure."""
  from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone
  n = len(curves)
  cols = min(5, n)
  rows = -(-n // cols)
  fig = Figure(figsize=(3 * cols, 2.6 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax, (name, (recall, precision)) in zip(axes.flat, curves.items()):
    ax.plot(recall, precision)
    title = name if ap is None else f'{name}  AP {ap[name]:.3f}'
    ax.set(title=title, xlim=(0, 1), ylim=(0, 1.02), xlabel='recall', ylabel='precision')
  for ax in list(axes.flat)[n:]:
    ax.axis('off')
  fig.tight_layout()
  return fig
