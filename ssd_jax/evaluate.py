"""Evaluation: restore parameters, detect over the eval split, score, report.

`evaluate(config, params)` runs the jitted detector over the config's eval
split on every device (batch sharded, results replicated so each host holds
them all), converts detections and ground truth to pixels, and computes the
config's metric (eval.metric: 'voc07', 'voc12' or 'coco'). `report` prints a
per-class table and writes `metrics.json` and precision-recall plots.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from ssd_jax import builders, checkpoints, config_lib, input_pipeline, metrics, postprocess
from ssd_jax import train as train_lib

CONFIG_FILE = 'config.json'


def find_config(path: str):
  """The config.json saved by training in a workdir (or above a checkpoints folder)."""
  folder = os.path.abspath(path)
  for _ in range(3):
    candidate = os.path.join(folder, CONFIG_FILE)
    if os.path.isfile(candidate):
      return config_lib.load_json(candidate)
    folder = os.path.dirname(folder)
  raise FileNotFoundError(f'no {CONFIG_FILE} in or above {path}; pass the config the model '
                          f'was trained with (--config=... or config=...).')


def restore_params(config, path: str, step: Optional[int] = None, mesh=None):
  """Model parameters (no optimiser state) from an orbax checkpoint, replicated on `mesh`.

  Args:
    path: a workdir, its checkpoints folder, or one step folder.
    step: which step (default: the one `path` names, else the latest).

  Returns:
    (params, step).
  """
  directory, named = checkpoints.location(path)
  mesh = mesh or train_lib.make_mesh()
  with ocp.CheckpointManager(directory) as mngr:
    step = checkpoints.pick_step(mngr, step if step is not None else named)
    abstract = jax.eval_shape(lambda: train_lib.create_state(config, mesh, jax.random.key(0)))
    replicated = NamedSharding(mesh, P())
    target = {'params': jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract.params)}
    restored = mngr.restore(step, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  return restored['params'], step


def network_detections(params, images, model, anchors, config) -> postprocess.Detections:
  """The network on f32[B, S, S, 3] network inputs, then the config's post-processing."""
  loc, logits = model.apply({'params': params}, images)
  return postprocess.from_config(loc, logits, anchors, config)


def _eval_step(params, batch, anchors, model, config):
  """Detections of a global batch plus the fields scoring needs, all replicated."""
  detections = network_detections(params, batch['image'], model, anchors, config)
  return detections, {k: v for k, v in batch.items() if k != 'image'}


def jit_eval_step(config, mesh):
  model = builders.build_model(config)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(train_lib.DATA_AXIS))
  return jax.jit(functools.partial(_eval_step, model=model, config=config),
                 in_shardings=(replicated, sharded, replicated), out_shardings=replicated)


def _split_ids(batch: dict) -> dict:
  """int64 image ids -> two int32 halves (JAX arrays are 32-bit by default)."""
  batch = dict(batch)
  ids = batch.pop('image_id').astype(np.int64)
  batch['id_hi'], batch['id_lo'] = (ids >> 31).astype(np.int32), (ids & 0x7FFFFFFF).astype(np.int32)
  return batch


def _to_pixels(boxes: np.ndarray, size) -> np.ndarray:
  h, w = size
  return boxes * np.array([w, h, w, h], np.float64)


def _collect(dets: postprocess.Detections, fields: dict, truths: dict, found: dict) -> None:
  """Adds one batch's real images (mask) to truths and detections, in pixels, by id."""
  ids = (fields['id_hi'].astype(np.int64) << 31) | fields['id_lo'].astype(np.int64)
  for i in np.nonzero(fields['mask'])[0]:
    real = fields['labels'][i] > 0
    size = fields['original_size'][i]
    truths[int(ids[i])] = {'boxes': _to_pixels(fields['boxes'][i][real], size),
                           'labels': fields['labels'][i][real],
                           'difficult': fields['difficult'][i][real]}
    valid = dets.valid[i]
    found[int(ids[i])] = {'boxes': _to_pixels(dets.boxes[i][valid], size),
                          'scores': dets.scores[i][valid], 'classes': dets.classes[i][valid]}


def detect_split(config, params, mesh=None) -> tuple[dict, dict]:
  """Ground truth and detections of the eval split, every image once, in pixels."""
  mesh = mesh or train_lib.make_mesh()
  train_lib.check_batch(config.train.batch_size, mesh)
  anchors = jax.device_put(builders.build_default_boxes(config), NamedSharding(mesh, P()))
  step = jit_eval_step(config, mesh)
  data, steps = input_pipeline.eval_dataset(config)
  truths, found = {}, {}
  for batch in data.take(steps).as_numpy_iterator():
    dets, fields = jax.device_get(step(params, train_lib.global_batch(_split_ids(batch), mesh),
                                       anchors))
    _collect(dets, fields, truths, found)
  return truths, found


def score(config, truths: dict, found: dict) -> dict:
  """The config's metric on pixel ground truth and detections."""
  names, metric = config_lib.class_names(config), config.eval.metric
  if metric in ('voc07', 'voc12'):
    return metrics.voc_evaluate(truths, found, names, use_07=metric == 'voc07')
  if metric == 'coco':
    return metrics.coco_evaluate(truths, found, names, config_lib.category_ids(config))
  raise ValueError(f'eval.metric={metric!r}; use "voc07", "voc12" or "coco".')


def evaluate(config, params, mesh=None) -> dict:
  """Scores `params` on the config's eval split; see `score` for the keys."""
  truths, found = detect_split(config, params, mesh)
  logging.info('evaluated %d images, %d detections', len(truths),
               sum(len(d['scores']) for d in found.values()))
  result = score(config, truths, found)
  result['num_images'] = len(truths)
  return result


def headline(result: dict) -> tuple[str, float]:
  """('mAP', value) for VOC, ('AP', value) for COCO."""
  return ('mAP', result['mAP']) if 'mAP' in result else ('AP', result['AP'])


def table(result: dict) -> str:
  """A per-class table of AP, and the headline number."""
  per_class = result.get('per_class_AP') or result['AP']
  width = max(len(n) for n in per_class) if per_class else 5
  lines = [f'{"class":<{width}}  AP']
  lines += [f'{name:<{width}}  {ap:.4f}' for name, ap in per_class.items()]
  name, value = headline(result)
  lines.append(f'{name:<{width}}  {value:.4f}  ({result.get("num_images", "?")} images)')
  if 'AP50' in result:
    lines += [f'{k:<{width}}  {result[k]:.4f}' for k in metrics.COCO_METRIC_NAMES]
  return '\n'.join(lines)


def report(result: dict, out_dir: str, step: Optional[int] = None) -> str:
  """Writes metrics.json (and pr_curves.png for VOC) into out_dir; returns the table."""
  os.makedirs(out_dir, exist_ok=True)
  serialisable = {k: v for k, v in result.items() if k != 'curves'}
  serialisable['step'] = step
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
    json.dump(serialisable, f, indent=2)  # a class without ground truth: NaN
  if 'curves' in result:
    plot_curves(result['curves'], os.path.join(out_dir, 'pr_curves.png'), result.get('AP'))
  return table(result)


def plot_curves(curves: dict, path: str, ap: Optional[dict] = None) -> None:
  """One precision-recall panel per class, in a grid."""
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
  fig.savefig(path, dpi=80)
