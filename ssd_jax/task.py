"""The task: what a config fixes, derived once.

Each entry point (main's modes, Detector, export, summary) makes one Task from
its config: the config validated (config_lib.validate, a new config), the
model, its default boxes and feature-map sizes, the number of classes, their
names and result-file category ids, the dtypes, and (built when first asked)
the parameter roles, the abstract variables, the learning-rate schedule and
the optimiser.
State creation, the train step, evaluation, the Detector, export and the
summary take the Task, so none of them re-derives any of it.

A YOLO dataset's class names are read from its data.yaml here, when the config
does not name them (the only file a Task reads), and a VOC folder's are
data.name's label map then: the data readers take them from the Task's config.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from ml_collections import config_dict

from ssd_jax import builders, config_lib, labels, models
from ssd_jax.models import ssd


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """A validated config and everything derived from it (see the module doc).

  Attributes:
    config: the validated config (do not change it: the rest was derived from it).
    model: the SSD module (models.ssd.SSD).
    default_boxes: f32[A, 4] normalised cxcywh, in the order of the head outputs.
    feature_sizes: the side of each source map, in model.sources order.
    (These two and the rest below are derived when first asked.)
    class_names: the C - 1 foreground class names (model classes 1..C-1).
    category_ids: each foreground class's id in COCO-format results.
    dtype, param_dtype: the compute and parameter dtypes.
    family: the model family (models.ssd.Family) of model.backbone.
  """
  config: config_dict.ConfigDict
  model: ssd.SSD
  class_names: tuple[str, ...]
  category_ids: tuple[int, ...]
  dtype: Any
  param_dtype: Any

  @classmethod
  def of(cls, config: config_dict.ConfigDict) -> 'Task':
    """The Task of `config` (left unchanged): validated, then derived."""
    config = config_lib.validate(with_dataset_classes(config))
    return cls(config=config, model=builders.build_model(config),
               class_names=labels.class_names(config),
               category_ids=labels.category_ids(config),
               dtype=config_lib.dtype(config.model.dtype),
               param_dtype=config_lib.dtype(config.model.param_dtype))

  @property
  def family(self) -> ssd.Family:
    """The model family of model.backbone (its published weights, converters)."""
    return models.family(self.config.model.backbone)

  @property
  def num_classes(self) -> int:
    """Classes including background (class 0)."""
    return self.config.model.num_classes

  @property
  def image_size(self) -> int:
    return self.config.model.image_size

  # Traced when first asked, not in `of`: tracing starts JAX's backend, which
  # must wait for jax.distributed.initialize on several hosts.
  @functools.cached_property
  def shapes(self) -> builders.ModelShapes:
    """One trace of the model's initialisation (builders.trace_model), no compute:
    the abstract variables, the parameter roles and the feature sizes below."""
    return builders.trace_model(self.config, self.model)

  @property
  def feature_sizes(self) -> tuple[int, ...]:
    return self.shapes.feature_sizes

  @functools.cached_property
  def default_boxes(self) -> np.ndarray:
    return builders.build_default_boxes(self.config, self.feature_sizes)

  @property
  def roles(self) -> dict:
    """Each parameter's role ('weight', 'bias' or 'norm'), a tree like the parameters."""
    return self.shapes.roles

  @property
  def abstract_variables(self) -> dict:
    """jax.ShapeDtypeStruct of each variable ({'params'}, and 'batch_stats' where
    the model has BatchNorm), no compute."""
    return self.shapes.variables

  @functools.cached_property
  def schedule(self):
    """The run's learning-rate schedule (optim.schedule_of: an optax schedule)."""
    from ssd_jax import optim  # training only: inference imports no optax
    return optim.schedule_of(self.config)

  @functools.cached_property
  def optimizer(self):
    """The run's optax optimiser (optim.create_optimizer with the task's
    parameter roles and schedule)."""
    from ssd_jax import optim
    return optim.create_optimizer(self.config.optim, self.roles, self.schedule)

  def init_variables(self, rng: jax.Array) -> dict:
    """Freshly initialised variables ({'params'}, maybe 'batch_stats')."""
    return builders.model_variables(self.model, self.image_size, rng)


def with_dataset_classes(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """`config`, or a copy naming a custom dataset's classes when data.class_names is
  unset: a YOLO dataset's from its data.yaml, a VOC folder's from data.name's
  label map (VOC's twenty by default). The readers of both take them from here."""
  d = config.data
  if d.format not in ('yolo', 'voc_folder') or d.class_names or d.root is None:
    return config
  if d.format == 'yolo':
    from ssd_jax.data import custom_data  # reads the YAML; no TensorFlow
    names = custom_data.yolo_class_names(d.root)
  else:
    names = labels.dataset_class_names(d.name)
  config = copy.deepcopy(config)
  config.data.class_names = names
  return config
