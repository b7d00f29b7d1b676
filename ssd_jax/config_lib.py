"""The one schema of every setting, with the values all SSD recipes share.

Config files in `configs/` start from `base_config()` through the presets of
ssd_jax/recipes.py and fill in what is specific to a dataset and input size.
The returned config is locked: assigning a field that does not exist (a typo)
raises at once, naming the field. Where
each value of the authors' recipe comes from, and where ssd_jax differs from
it: docs/recipe.md (tests/test_recipe.py keeps the two in agreement).
"""
from __future__ import annotations

import copy

import jax.numpy as jnp
from ml_collections import config_dict

from ssd_jax import anchors, labels, losses, matching, models, pixels
from ssd_jax.models import ssd

MEAN_RGB = pixels.MEAN_RGB  # the schema's default data.mean_rgb


def base_config(backbone: str = 'vgg16') -> config_dict.ConfigDict:
  """Every field with its shared default; `None` placeholders must be set.

  The section `backbone` holds the settings of the backbone named (model.backbone,
  a family of ssd_jax.models), so its fields depend on which one.
  """
  c = config_dict.ConfigDict()
  c.seed = 0

  c.model = config_dict.ConfigDict(dict(
      image_size=config_dict.placeholder(int),   # side of the square input, pixels
      # Including background (class 0); None: from data.class_names or data.name's
      # label map (config_lib.validate derives it, the one place that does).
      num_classes=config_dict.placeholder(int),
      backbone=backbone,                         # a family of ssd_jax.models; settings: backbone
      head='ssd',                                # models.all_heads(): 'ssd' (3x3 convs), ...
      # Prediction source layers, network order (an architecture preset sets them).
      sources=config_dict.placeholder(tuple),
      width=1.0,                                 # channel multiplier (tiny models < 1)
      batch_norm_momentum=0.99,                  # BatchNorm layers, where a part has them
      batch_norm_epsilon=1e-5,
      dtype='float32',                           # compute dtype, e.g. 'bfloat16'
      param_dtype='float32',
      # Orbax checkpoint (workdir, checkpoints/ or a step folder) whose matching
      # parameters (same name and shape) initialise a new run: a pretrained
      # base, or a detector to fine-tune on other classes.
      init_checkpoint=config_dict.placeholder(str),
      # Or published weights by name (ssd_jax.pretrained.PUBLISHED, e.g.
      # 'vgg16_imagenet'): downloaded and converted once, then as init_checkpoint.
      init_from=config_dict.placeholder(str),
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

  c.backbone = config_dict.ConfigDict(dict(models.backbone(backbone).settings))

  # matching.RULES: 'bipartite' pairing, then IoU >= threshold (the authors');
  # 'forced_best': each object's best box, then IoU > threshold (NVIDIA's).
  c.matching = config_dict.ConfigDict(dict(iou_threshold=0.5, rule='bipartite'))
  # normalize (losses.NORMALIZE): divide by the batch's matched boxes ('batch',
  # the authors') or each image by its own and average ('image', NVIDIA's).
  c.loss = config_dict.ConfigDict(dict(neg_pos_ratio=3.0, loc_weight=1.0, normalize='batch'))

  c.data = config_dict.ConfigDict(dict(
      # 'tfds': splits are 'name/config:split' (e.g. 'voc/2007:test');
      # 'voc_folder': splits are ImageSets/Main names under data.root, or, in a
      #   folder without ImageSets (images and XML files), 'train' and 'val';
      # 'yolo': data.root is an Ultralytics data.yaml (or its folder); splits
      #   are its keys ('train', 'val', 'test');
      # 'coco_json': splits are 'annotations.json:image_dir' under data.root.
      format='tfds',
      root=config_dict.placeholder(str),         # custom dataset folder
      # Custom classes; None: the YOLO YAML's names, else the label map of data.name.
      class_names=config_dict.placeholder(tuple),
      # Dataset category id of each model class 1..C-1 in COCO-format files;
      # None: COCO's official ids for COCO's classes, else the model class.
      category_ids=config_dict.placeholder(tuple),
      name=config_dict.placeholder(str),         # 'voc', 'coco', ...
      train_splits=config_dict.placeholder(tuple),
      eval_split=config_dict.placeholder(str),
      data_dir=config_dict.placeholder(str),     # TFDS data_dir; None: TFDS default
      # A voc_folder without ImageSets: the share of its images in split 'val'
      # (seeded by seed; custom_data.split_stems) and the JSON file recording the
      # split (training sets <workdir>/data_split.json; evaluation reads it).
      val_fraction=0.1,
      split_file=config_dict.placeholder(str),
      mean_rgb=MEAN_RGB,                         # network input: (pixel - mean) / std, RGB
      std_rgb=(1.0, 1.0, 1.0),                   # the VGG recipes: 1 (mean subtracted only)
      max_boxes=100,                             # training ground truth padded to this many
      # Side of the square uint8 buffer each training image's decoded crop
      # travels to the device in (pixels.py finishes it there). A crop larger
      # on a side is shrunk on the host to fit first: VOC's images are at most
      # 500 pixels a side, COCO's 640.
      pixel_buffer=512,
  ))

  # Training augmentation, the authors' release (ssd_jax/data/augment.py;
  # docs/recipe.md). enabled=False is the paper's "no data augmentation"
  # ablation: a bilinear resize only.
  c.augment = config_dict.ConfigDict(dict(
      enabled=True,
      photometric=True,
      photometric_prob=0.5,                      # each photometric step
      brightness_delta=32.0,                     # pixels, of 255
      contrast_range=(0.5, 1.5),
      saturation_range=(0.5, 1.5),
      hue_delta=18.0,                            # OpenCV's 0..180 hue scale: +-36 degrees
      channel_swap_prob=0.0,                     # the release's 0; some ports use 0.5
      zoom_out=True,                             # the release's "expand" (SSD300*/SSD512*)
      zoom_out_prob=0.5,
      zoom_out_max_ratio=4.0,
      crop=True,                                 # batch sampling: whole image or a patch
      crop_min_ious=(0.1, 0.3, 0.5, 0.7, 0.9),   # one sampler each: IoU with any box >= it
      crop_any_patch=True,                       # the sampler with max IoU 1.0
      crop_min_scale=0.3,                        # the release's; the paper's text says 0.1
      crop_aspect_range=(0.5, 2.0),
      crop_trials=50,                            # per sampler; the first that qualifies
      resize_methods=pixels.RESIZE_METHODS,      # one drawn per image
      flip=True,
      flip_prob=0.5,
  ))

  c.optim = config_dict.ConfigDict(dict(
      name='sgd',                                # 'sgd' (Caffe's, the paper's), 'sgd_torch', 'adam'
      learning_rate=1e-3,
      # The global batch learning_rate is given for; the rate then scales linearly
      # to train.batch_size. None: learning_rate as is (the SSD recipes' batch 32).
      lr_batch_size=config_dict.placeholder(int),
      momentum=0.9,
      weight_decay=5e-4,
      # Parameter roles weight decay applies to (ssd.ROLES): 'weight' (kernels,
      # the L2Norm scale), 'bias', 'norm' (BatchNorm scale and offset).
      weight_decay_roles=('weight',),
      bias_lr_mult=2.0,                          # sgd: biases learn at 2x the rate (Caffe lr_mult)
      schedule='steps',                          # 'steps' (boundaries) or 'cosine' (to num_steps)
      warmup_steps=0,                            # linear warmup; the recipe has none
      # None: warmup factor (step + 1) / warmup_steps; else linear from this factor.
      warmup_start_factor=config_dict.placeholder(float),
      boundaries=config_dict.placeholder(tuple), # steps where lr *= decay_factor
      decay_factor=0.1,
      grad_clip_norm=config_dict.placeholder(float),
      # Decay of an exponential moving average of the weights, which evaluation
      # and export then use (builders.inference_variables); None: no average.
      ema_decay=config_dict.placeholder(float),
  ))

  c.train = config_dict.ConfigDict(dict(
      batch_size=32,                             # global, over all devices and hosts
      num_steps=config_dict.placeholder(int),
      log_every=50,                              # steps between summaries (and NaN checks)
      checkpoint_every=5000,                     # steps between checkpoints
      keep_checkpoints=3,
      distributed=False,                         # several hosts: join them (see cluster)
  ))

  # Several hosts (train.distributed=True; see ssd_jax/cluster.py and the README).
  # Unset fields fall back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  # JAX_PROCESS_ID, then to what JAX detects (Cloud TPU, SLURM, Open MPI, k8s).
  c.cluster = config_dict.ConfigDict(dict(
      coordinator_address=config_dict.placeholder(str),  # host:port of process 0
      num_processes=config_dict.placeholder(int),
      process_id=config_dict.placeholder(int),
      initialization_timeout_s=300,              # how long hosts wait for each other to join
      heartbeat_timeout_s=20,                    # a silent host is declared dead after this
      shutdown_timeout_s=60,                     # how long a finished host waits for the rest
  ))

  c.eval = config_dict.ConfigDict(dict(
      score_threshold=0.01,
      top_k=400,                                 # per class, before NMS
      nms_iou=0.45,
      max_detections=200,                        # per image, after NMS
      clip_boxes=True,                           # decoded boxes clipped to the image before NMS
      metric='voc07',                            # 'voc07' (11-point), 'voc12', 'coco'
      every_steps=0,                             # train_and_eval: 0 = only after training
      num_rendered=16,                           # eval images drawn after train_and_eval
      draw_score=0.4,                            # boxes drawn from this score up
  ))
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

# Fields whose value must be one of a few names: (section, field) -> choices.
CHOICES = {
    ('data', 'format'): DATA_FORMATS,
    ('eval', 'metric'): METRICS,
    ('optim', 'name'): OPTIMIZERS,
    ('optim', 'schedule'): SCHEDULES,
    ('anchors', 'clip'): anchors.CLIP_MODES,
    ('matching', 'rule'): matching.RULES,
    ('loss', 'normalize'): losses.NORMALIZE,
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
