"""The one schema of every setting, with the values all SSD recipes share.

Config files in `configs/` start from `base_config()` and fill in what is
specific to a dataset and input size. The returned config is locked: assigning
a field that does not exist (a typo) raises at once, naming the field.
"""
from __future__ import annotations

import jax.numpy as jnp
from ml_collections import config_dict

from ssd_jax import labels, models

# Mean pixel of the ImageNet-pretrained VGG16, RGB order, subtracted from inputs.
MEAN_RGB = (123.0, 117.0, 104.0)


def base_config() -> config_dict.ConfigDict:
  """Every field with its shared default; `None` placeholders must be set."""
  c = config_dict.ConfigDict()
  c.seed = 0

  c.model = config_dict.ConfigDict(dict(
      image_size=config_dict.placeholder(int),   # side of the square input, pixels
      num_classes=config_dict.placeholder(int),  # including background (class 0)
      extras='ssd300',                           # layout of the extra layers
      sources=models.SSD300_SOURCES,             # prediction source layers
      width=1.0,                                 # channel multiplier (tiny models < 1)
      atrous=True,                               # pool5 3x3/1 + dilated conv6
      fc_features=1024,                          # conv6 / conv7 channels
      l2norm_scale=20.0,                         # initial conv4_3 L2Norm scale
      dtype='float32',                           # compute dtype, e.g. 'bfloat16'
      param_dtype='float32',
      # Orbax checkpoint (workdir, checkpoints/ or a step folder) whose matching
      # parameters (same name and shape) initialise a new run: a pretrained
      # base, or a detector to fine-tune on other classes.
      init_checkpoint=config_dict.placeholder(str),
  ))

  # Default boxes; sizes in pixels of the network input. When min_sizes is
  # None, sizes come from the paper's s_min / s_max rule.
  c.anchors = config_dict.ConfigDict(dict(
      min_sizes=config_dict.placeholder(tuple),
      max_sizes=config_dict.placeholder(tuple),
      steps=config_dict.placeholder(tuple),      # None: image_size / feature size
      aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
      s_min=0.2,
      s_max=0.9,
      first_scale=0.1,                           # conv4_3's scale in the paper
      clip='none',                               # anchors.CLIP_MODES; the recipe does not clip
      variances=(0.1, 0.2),                      # centre, size
  ))

  c.matching = config_dict.ConfigDict(dict(iou_threshold=0.5))
  c.loss = config_dict.ConfigDict(dict(neg_pos_ratio=3.0, loc_weight=1.0))

  c.data = config_dict.ConfigDict(dict(
      # 'tfds': splits are 'name/config:split' (e.g. 'voc/2007:test');
      # 'voc_folder': splits are ImageSets/Main names under data.root;
      # 'coco_json': splits are 'annotations.json:image_dir' under data.root.
      format='tfds',
      root=config_dict.placeholder(str),         # custom dataset folder
      class_names=config_dict.placeholder(tuple),  # custom classes; None: VOC's
      # Dataset category id of each model class 1..C-1 in COCO-format files;
      # None: COCO's official ids for COCO's classes, else the model class.
      category_ids=config_dict.placeholder(tuple),
      name=config_dict.placeholder(str),         # 'voc', 'coco', ...
      train_splits=config_dict.placeholder(tuple),
      eval_split=config_dict.placeholder(str),
      data_dir=config_dict.placeholder(str),     # TFDS data_dir; None: TFDS default
      mean_rgb=MEAN_RGB,
      max_boxes=100,                             # ground truth padded to this many
      shuffle_buffer=2048,                       # examples, per host
      max_image_side=1024,                       # larger images shrink before augmenting
  ))

  # Training augmentation (SPEC.md); enabled=False is the paper's "no data
  # augmentation" ablation: resize only.
  c.augment = config_dict.ConfigDict(dict(
      enabled=True,
      photometric=True,
      photometric_prob=0.5,                      # each photometric step
      brightness_delta=32.0,
      contrast_range=(0.5, 1.5),
      saturation_range=(0.5, 1.5),
      hue_delta=18.0,                            # degrees
      zoom_out=True,                             # "expand", SSD300*/SSD512*
      zoom_out_prob=0.5,
      zoom_out_max_ratio=4.0,
      crop=True,
      crop_min_ious=(0.1, 0.3, 0.5, 0.7, 0.9),   # besides "whole image" and "any patch"
      crop_min_scale=0.3,                        # the recipe's; the paper says 0.1
      crop_aspect_range=(0.5, 2.0),
      crop_trials=50,
      flip=True,
      flip_prob=0.5,
  ))

  c.optim = config_dict.ConfigDict(dict(
      name='sgd',                                # 'sgd' (momentum, the paper's) or 'adam'
      learning_rate=1e-3,
      momentum=0.9,
      weight_decay=5e-4,
      warmup_steps=500,                          # linear warmup, as reproductions add
      boundaries=config_dict.placeholder(tuple), # steps where lr *= decay_factor
      decay_factor=0.1,
      grad_clip_norm=config_dict.placeholder(float),
  ))

  c.train = config_dict.ConfigDict(dict(
      batch_size=32,                             # global, over all devices and hosts
      num_steps=config_dict.placeholder(int),
      log_every=50,                              # steps between summaries (and NaN checks)
      checkpoint_every=5000,                     # steps between checkpoints
      keep_checkpoints=3,
      distributed=False,                         # call jax.distributed.initialize()
  ))

  c.eval = config_dict.ConfigDict(dict(
      score_threshold=0.01,
      top_k=400,                                 # per class, before NMS
      nms_iou=0.45,
      max_detections=200,                        # per image, after NMS
      metric='voc07',                            # 'voc07' (11-point), 'voc12', 'coco'
      every_steps=0,                             # train_and_eval: 0 = only after training
      num_rendered=16,                           # eval images drawn after train_and_eval
      draw_score=0.4,                            # boxes drawn from this score up
  ))
  c.lock()
  return c


# What the input size fixes, whatever the dataset (the recipe's values).
ARCHITECTURES = {
    'ssd300': dict(
        model=dict(image_size=300, extras='ssd300', sources=models.SSD300_SOURCES),
        anchors=dict(steps=(8, 16, 32, 64, 100, 300),
                     aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))),
    ),
    'ssd512': dict(
        model=dict(image_size=512, extras='ssd512', sources=models.SSD512_SOURCES),
        anchors=dict(steps=(8, 16, 32, 64, 128, 256, 512),
                     aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))),
    ),
}

# What the dataset fixes, whatever the input size: splits, schedule, metric.
DATASETS = {
    'voc': dict(
        model=dict(num_classes=labels.num_model_classes('voc')),
        data=dict(name='voc', train_splits=('voc/2007:train+validation',
                                            'voc/2012:train+validation'),
                  eval_split='voc/2007:test'),
        optim=dict(boundaries=(80_000, 100_000)),
        train=dict(num_steps=120_000),
        eval=dict(metric='voc07'),
    ),
    'coco': dict(
        model=dict(num_classes=labels.num_model_classes('coco')),
        data=dict(name='coco', train_splits=('coco/2017:train',),
                  eval_split='coco/2017:validation'),
        optim=dict(boundaries=(280_000, 360_000)),
        train=dict(num_steps=400_000),
        eval=dict(metric='coco'),
    ),
}


def preset(architecture: str, dataset: str) -> config_dict.ConfigDict:
  """`base_config()` with an architecture's and a dataset's values filled in."""
  c = base_config()
  for table, key in ((ARCHITECTURES, architecture), (DATASETS, dataset)):
    if key not in table:
      raise ValueError(f'unknown preset {key!r}; known: {sorted(table)}.')
    for section, values in table[key].items():
      c[section].update(values)
  return c


def dtype(name: str):
  """'bfloat16' -> jnp.bfloat16, with an error that names the field."""
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise ValueError(f'unknown dtype {name!r} in model.dtype / model.param_dtype; '
                     f'use e.g. "float32" or "bfloat16".') from e


def optional_list(values):
  """None, (), or (None,) (what a command-line None becomes) -> None; else a tuple."""
  if values is None or all(v is None for v in values):
    return None
  return tuple(values)


def validate(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """Checks settings the schema cannot: required fields and list lengths."""
  for field in ('model.image_size', 'model.num_classes'):
    section, name = field.split('.')
    if config[section][name] is None:
      raise ValueError(f'config field {field} is not set; set it in the config file or '
                       f'with --config.{field}=...')
  n = len(config.model.sources)
  for name in ('min_sizes', 'max_sizes', 'steps', 'aspect_ratios'):
    values = optional_list(config.anchors[name])
    if values is not None and len(values) != n:
      raise ValueError(f'anchors.{name} has {len(values)} entries for {n} sources '
                       f'{tuple(config.model.sources)}; give one entry per source.')
  names = config.data.class_names
  if names and config.model.num_classes != len(names) + 1:
    raise ValueError(f'model.num_classes={config.model.num_classes} but data.class_names has '
                     f'{len(names)} names; set model.num_classes={len(names) + 1} '
                     f'(the classes plus background).')
  ids = config.data.category_ids
  if ids and len(ids) != config.model.num_classes - 1:
    raise ValueError(f'data.category_ids has {len(ids)} ids for {config.model.num_classes - 1} '
                     f'foreground classes (model.num_classes - 1); give one id per class.')
  if config.model.num_classes < 2:
    raise ValueError('model.num_classes counts background too and must be >= 2.')
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


def class_names(config) -> tuple[str, ...]:
  """Foreground class names, model class c being names[c - 1]: data.class_names,
  else the label map of data.name."""
  if config.data.class_names:
    return tuple(config.data.class_names)
  return labels.class_names(config.data.name)


def category_ids(config) -> tuple[int, ...]:
  """Dataset category id of each model class 1..C-1, for COCO files:
  data.category_ids, else the official ids for COCO, else the model class itself."""
  if config.data.category_ids:
    return tuple(config.data.category_ids)
  if config.data.name == 'coco' and not config.data.class_names:
    return labels.COCO_CATEGORY_IDS
  return tuple(range(1, len(class_names(config)) + 1))


def _tuples(value):
  """JSON lists back to the tuples the schema holds."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def save_json(config: config_dict.ConfigDict, path: str) -> None:
  """Writes the config as JSON (next to checkpoints, so a workdir is self-describing)."""
  with open(path, 'w') as f:
    f.write(config.to_json(indent=2))


def load_json(path: str) -> config_dict.ConfigDict:
  """A config written by `save_json`, on the current schema (unknown fields are errors)."""
  import json
  with open(path) as f:
    values = _tuples(json.load(f))
  clip = values.get('anchors', {}).get('clip')
  if isinstance(clip, bool):  # before anchors.clip named its mode
    values['anchors']['clip'] = 'cxcywh' if clip else 'none'
  c = base_config()
  c.update(values)
  return c
