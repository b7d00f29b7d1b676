"""Configs: the schema bound to a model family, validated, loaded, unset.

`base_config(backbone)` is the schema (ssd_jax/schema.py, which imports no
model) with that family's `backbone` settings; config files in `configs/`
start from it through the presets of ssd_jax/recipes.py and fill in what is
specific to a dataset and input size. The config is locked: assigning a field
that does not exist (a typo) raises at once, naming the field. `validate`
checks what the schema cannot, against the model families too.
"""
from __future__ import annotations

import copy

import jax.numpy as jnp
from ml_collections import config_dict

from ssd_jax import anchors, labels, losses, matching, models, pixels, schema
from ssd_jax.models import ssd

MEAN_RGB = pixels.MEAN_RGB  # the schema's default data.mean_rgb


def base_config(backbone: str = 'vgg16') -> config_dict.ConfigDict:
  """The schema (schema.fields()) for the backbone named, locked.

  model.backbone is `backbone` and the section `backbone` holds that family's
  settings (ssd_jax.models), so its fields depend on which one.
  """
  c = schema.fields()
  c.model.backbone = backbone
  c.backbone = config_dict.ConfigDict(dict(models.backbone(backbone).settings))
  c.lock()
  return c


def dtype(name: str):
  """'bfloat16' -> jnp.bfloat16, with an error that names the field."""
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise ValueError(f'unknown dtype {name!r} in model.dtype / model.param_dtype; '
                     f'use e.g. "float32" or "bfloat16".') from e


def _optional_tuple(values):
  """None, (), or (None,) (what a command-line None becomes) -> None; else a tuple."""
  if values is None or all(v is None for v in values):
    return None
  return tuple(values)


DATA_FORMATS = ('tfds', 'voc_folder', 'yolo', 'coco_json')
METRICS = ('voc07', 'voc12', 'coco')
OPTIMIZERS = ('sgd', 'sgd_torch', 'adam')
SCHEDULES = ('steps', 'cosine')
# augment.crop_style: the release's batch samplers, or DALI's RandomBBoxCrop
# (NVIDIA's SSD300); data/augment.py.
CROP_STYLES = ('release', 'dali')

# Fields whose value must be one of a few names: (section, field) -> choices.
CHOICES = {
    ('data', 'format'): DATA_FORMATS,
    ('eval', 'metric'): METRICS,
    ('optim', 'name'): OPTIMIZERS,
    ('optim', 'schedule'): SCHEDULES,
    ('anchors', 'clip'): anchors.CLIP_MODES,
    ('matching', 'rule'): matching.RULES,
    ('loss', 'normalize'): losses.NORMALIZE,
    ('augment', 'photometric_style'): pixels.PHOTOMETRIC_STYLES,
    ('augment', 'crop_style'): CROP_STYLES,
}


def _check_parts(config) -> None:
  """The section `backbone` holds the named backbone's settings, and model.sources
  are layers of it, distinct and in network order."""
  m = config.model
  models.head(m.head)  # a clear error for an unknown name
  expected = set(models.backbone(m.backbone).settings)
  if set(config.backbone.keys()) != expected:
    raise ValueError(f'config section backbone has the fields {sorted(config.backbone.keys())} '
                     f'but model.backbone={m.backbone!r} takes {sorted(expected)}; start from a '
                     f'config file of that backbone (config_lib.base_config({m.backbone!r})).')
  if not m.sources:
    raise ValueError('config field model.sources is not set; start from an architecture preset '
                     '(recipes.preset) or name the prediction source layers.')
  ssd.check_sources(m.sources, models.backbone(m.backbone).layers(config.backbone))


def _num_classes(config) -> int:
  """model.num_classes, or, when unset, the class names (data.class_names, else
  data.name's label map) plus background. Set, it must agree with the class
  names."""
  n, d = config.model.num_classes, config.data
  if d.class_names:
    if n is None:
      return len(d.class_names) + 1
    if n != len(d.class_names) + 1:
      raise ValueError(f'model.num_classes={n} but data.class_names has {len(d.class_names)} '
                       f'names; set model.num_classes={len(d.class_names) + 1} (the classes '
                       f'plus background) or unset it (--config.model.num_classes=None).')
    return n
  if n is None:
    if d.name not in labels.LABEL_MAPS:
      raise ValueError('config field model.num_classes is not set and neither data.class_names '
                       'nor data.name gives the classes; set one of them (e.g. '
                       '--config.data.class_names=\'("cat","dog")\').')
    return labels.num_model_classes(d.name)
  return n


def validate(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """The config checked for what the schema cannot, with command-line values
  normalised: a new config (`config` is left as it is); no file is read.

  ssd_jax.task.Task.of calls it once per entry point; builders then trust the
  config. Normalised: optional lists ((), (None,) -> None), nested lists ->
  tuples. Checked: required fields, one anchor entry per source, named choices
  and dtypes. Filled in: model.num_classes from the class names (see
  _num_classes). A YOLO dataset's class names must be given (Task.of reads them
  from its data.yaml first).
  """
  config = copy.deepcopy(config)
  a, d = config.anchors, config.data
  for name in ('min_sizes', 'max_sizes', 'steps'):
    a[name] = _optional_tuple(a[name])
  a.aspect_ratios = tuple(tuple(r) for r in a.aspect_ratios)
  config.model.sources = tuple(config.model.sources or ())
  d.class_names = _optional_tuple(d.class_names)
  d.category_ids = _optional_tuple(d.category_ids)
  for (section, name), choices in CHOICES.items():
    if config[section][name] not in choices:
      raise ValueError(f'{section}.{name}={config[section][name]!r} is not one of {choices}.')
  _check_parts(config)
  config.optim.weight_decay_roles = tuple(config.optim.weight_decay_roles)
  unknown = set(config.optim.weight_decay_roles) - set(ssd.ROLES)
  if unknown:
    raise ValueError(f'optim.weight_decay_roles has {sorted(unknown)}; roles are {ssd.ROLES}.')
  unknown = set(config.augment.resize_methods) - set(pixels.RESIZE_METHODS)
  if unknown or not config.augment.resize_methods:
    raise ValueError(f'augment.resize_methods={tuple(config.augment.resize_methods)}: each must '
                     f'be one of {pixels.RESIZE_METHODS} (at least one).')
  if d.pixel_buffer < 1:
    raise ValueError(f'data.pixel_buffer={d.pixel_buffer} must be a positive number of pixels.')
  if len(d.std_rgb) != 3 or min(d.std_rgb) <= 0:
    raise ValueError(f'data.std_rgb={tuple(d.std_rgb)} must be three positive numbers (RGB).')
  if d.format != 'tfds' and d.root is None:
    raise ValueError(f'data.format={d.format!r} needs data.root, the dataset folder.')
  if d.format == 'yolo' and not d.class_names:
    raise ValueError('data.format=\'yolo\' with no data.class_names: build the config\'s task '
                     '(ssd_jax.task.Task.of), which reads them from its data.yaml, or set them.')
  config.model.num_classes = _num_classes(config)
  if config.model.image_size is None:
    raise ValueError('config field model.image_size is not set; set it in the config file or '
                     'with --config.model.image_size=...')
  n = len(config.model.sources)
  for name in ('min_sizes', 'max_sizes', 'steps', 'aspect_ratios'):
    if a[name] is not None and len(a[name]) != n:
      raise ValueError(f'anchors.{name} has {len(a[name])} entries for {n} sources '
                       f'{config.model.sources}; give one entry per source.')
  if config.model.init_checkpoint and config.model.init_from:
    raise ValueError(f'model.init_checkpoint={config.model.init_checkpoint} and '
                     f'model.init_from={config.model.init_from} are both set; give one.')
  if config.model.num_classes < 2:
    raise ValueError('model.num_classes counts background too and must be >= 2.')
  if d.category_ids and len(d.category_ids) != config.model.num_classes - 1:
    raise ValueError(f'data.category_ids has {len(d.category_ids)} ids for '
                     f'{config.model.num_classes - 1} foreground classes (model.num_classes - '
                     f'1); give one id per class, or unset it (--config.data.category_ids=None) '
                     f'to number the classes 1..N in results files.')
  dtype(config.model.dtype)
  dtype(config.model.param_dtype)
  return config


def load(path: str) -> config_dict.ConfigDict:
  """Runs a config file's `get_config()` (for notebooks and tests; main.py
  uses ml_collections' config flags)."""
  import importlib.util
  import os
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} does not exist.')
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {path} defines no get_config().')
  return module.get_config()


# --config.<field>=None on the command line unsets an optional field.
UNSET = 'None'


def split_unsets(argv: list) -> tuple[list, list]:
  """(argv without its --config.<field>=None arguments, those fields' names)."""
  rest, unset = [], []
  for arg in argv:
    name, sep, value = arg.partition('=')
    if sep and value == UNSET and name.startswith('--config.'):
      unset.append(name[len('--config.'):])
    else:
      rest.append(arg)
  return rest, unset


def unset_fields(config, fields: list) -> None:
  """Sets each dotted field to None; only fields whose default (config_lib.base_config)
  is None may be unset. ValueError naming the field otherwise."""
  defaults = base_config(config.model.backbone)
  for field in fields:
    *sections, name = field.split('.')
    parent, default = config, defaults
    for section in sections:
      parent, default = parent[section], default[section]
    if name not in parent:
      raise KeyError(f'{field!r}: no such config field')
    if default[name] is not None:
      raise ValueError(f'--config.{field}=None: {field} is not optional (default '
                       f'{default[name]!r}); give it a value')
    parent[name] = None
