"""The recipes: config presets of each architecture and dataset, and torchvision's.

config_lib.base_config() is the schema with the recipe's shared defaults; a
config file starts from `preset(architecture, dataset)` (what the input size
fixes, then what the dataset fixes) or from one of torchvision's recipes, and
adds its own values. `with_sources` makes the paper's Table 3 configs;
`quickstart_training` the built-in shapes data's recipe.
"""
from __future__ import annotations

from ml_collections import config_dict

from ssd_jax import config_lib, labels, models
from ssd_jax.models import ssd


# What the input size fixes, whatever the dataset: each model family's presets
# (ssd300, ssd512: models/vgg16.py; ssdlite320: models/mobilenet_v3.py; ...).
ARCHITECTURES = models.architectures()

# What the dataset fixes, whatever the input size: splits, schedule, metric.
DATASETS = {
    'voc': dict(
        data=dict(name='voc', train_splits=('voc/2007:train+validation',
                                            'voc/2012:train+validation'),
                  eval_split='voc/2007:test'),
        optim=dict(boundaries=(80_000, 100_000)),
        train=dict(num_steps=120_000),
        eval=dict(metric='voc07'),
    ),
    'coco': dict(
        data=dict(name='coco', train_splits=('coco/2017:train',),
                  eval_split='coco/2017:validation', pixel_buffer=640),
        optim=dict(boundaries=(280_000, 360_000)),
        train=dict(num_steps=400_000),
        eval=dict(metric='coco'),
    ),
}


def preset(architecture: str, dataset: str) -> config_dict.ConfigDict:
  """`config_lib.base_config()` with an architecture's and a dataset's values filled in."""
  for table, key in ((ARCHITECTURES, architecture), (DATASETS, dataset)):
    if key not in table:
      raise ValueError(f'unknown preset {key!r}; known: {sorted(table)}.')
  c = config_lib.base_config(ARCHITECTURES[architecture]['model'].get('backbone', 'vgg16'))
  for table, key in ((ARCHITECTURES, architecture), (DATASETS, dataset)):
    for section, values in table[key].items():
      c[section].update(values)
  return c


# torchvision's ssd300_vgg16: its default-box scales (fractions of the 300 px
# input) and its input mean of [0, 1] RGB (with std 1/255, i.e. 0..255 pixels).
TORCHVISION_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
TORCHVISION_MEAN = (0.48235, 0.45882, 0.40784)


def torchvision_ssd300() -> config_dict.ConfigDict:
  """SSD300 on COCO as torchvision's ssd300_vgg16 builds it (see ssd_jax/convert.py).

  Default boxes: TORCHVISION_SCALES of 300 px, sizes clipped to the image.
  Input: RGB pixels minus 255 * TORCHVISION_MEAN, resized bilinearly. Decoding,
  clipping to the image, score > 0.01, the best 400 per class, NMS at 0.45 and
  200 per image, as its postprocess_detections does. 91 classes, ordered as
  labels.TORCHVISION_CLASS_ORDER.
  """
  c = preset('ssd300', 'coco')
  sizes = tuple(300 * s for s in TORCHVISION_SCALES)
  c.anchors.min_sizes, c.anchors.max_sizes, c.anchors.clip = sizes[:-1], sizes[1:], 'wh'
  c.data.class_names = labels.TORCHVISION_CLASS_NAMES
  c.data.category_ids = labels.TORCHVISION_CLASS_ORDER[1:]
  c.data.mean_rgb = tuple(255 * m for m in TORCHVISION_MEAN)
  c.eval.update(dict(score_threshold=0.01, top_k=400, nms_iou=0.45, max_detections=200))
  return c


# torchvision's references/detection recipe for ssdlite320_mobilenet_v3_large on
# COCO: 660 epochs at batch 192 (8 GPUs x 24), SGD momentum 0.9 as PyTorch runs it,
# lr 0.15 with cosine annealing and a 1000-iteration linear warmup from 0.001,
# weight decay 4e-5 on every parameter (norm_weight_decay unset), RandomIoUCrop
# and horizontal flip only. An epoch: the 117,266 COCO 2017 train images that
# have objects (torchvision drops the rest for training); VOC 07+12 trainval has
# 16,551 (the same 660 epochs there are ssd_jax's choice, not a published recipe).
TORCHVISION_SSDLITE_EPOCHS, TORCHVISION_SSDLITE_BATCH = 660, 192
TRAIN_IMAGES = {'coco': 117_266, 'voc': 16_551}


def torchvision_ssdlite320(dataset: str = 'coco') -> config_dict.ConfigDict:
  """SSDLite320-MobileNetV3-Large as torchvision builds and trains it.

  Inference as its SSD postprocess: score > 0.001, the best 300 per class, NMS
  at 0.55, 300 per image. On 'coco', 91 classes in labels.TORCHVISION_CLASS_ORDER,
  so converted weights (ssd_jax.convert --format=torchvision_ssdlite320) apply.
  """
  c = preset('ssdlite320', dataset)
  if dataset == 'coco':
    c.data.class_names = labels.TORCHVISION_CLASS_NAMES
    c.data.category_ids = labels.TORCHVISION_CLASS_ORDER[1:]
  c.eval.update(dict(score_threshold=0.001, top_k=300, nms_iou=0.55, max_detections=300))
  c.optim.update(dict(name='sgd_torch', learning_rate=0.15, lr_batch_size=TORCHVISION_SSDLITE_BATCH,
                      momentum=0.9,
                      weight_decay=4e-5, weight_decay_roles=ssd.ROLES, bias_lr_mult=1.0,
                      schedule='cosine', warmup_steps=1000, warmup_start_factor=0.001,
                      boundaries=None))
  epochs, batch = TORCHVISION_SSDLITE_EPOCHS, TORCHVISION_SSDLITE_BATCH
  c.train.update(dict(batch_size=batch, num_steps=round(epochs * TRAIN_IMAGES[dataset] / batch)))
  c.augment.update(dict(photometric=False, zoom_out=False, crop_trials=40,
                        resize_methods=('bilinear',)))
  return c


def quickstart_training(config: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """The config trained as the offline quickstart (configs/shapes.py), in place:
  on the built-in ssd_shapes data (4000 train / 500 test images of 128x128, up
  to 8 objects), from scratch with Adam (2e-3, 100 warm-up steps, /10 at 800
  and 1040), 1200 steps of 32, no zoom-out (the shapes already span small to
  large), scored with VOC2007's 11-point AP."""
  d = config.data
  d.name, d.max_boxes, d.pixel_buffer = 'ssd_shapes', 8, 128
  d.train_splits, d.eval_split = ('ssd_shapes:train',), 'ssd_shapes:test'
  config.augment.zoom_out = False
  config.optim.update(dict(name='adam', learning_rate=2e-3, weight_decay=1e-5, warmup_steps=100,
                           boundaries=(800, 1040), grad_clip_norm=10.0))
  config.train.update(dict(batch_size=32, num_steps=1200, log_every=100, checkpoint_every=400))
  config.eval.metric = 'voc07'
  return config


def with_sources(config: config_dict.ConfigDict, sources) -> config_dict.ConfigDict:
  """The config predicting from `sources` only (the paper's Table 3), in place.

  Each kept source keeps its step and aspect ratios; default-box sizes follow
  the paper's scale rule over the kept sources (s_min to s_max, conv4_3 at
  anchors.first_scale when it is kept, else no special first scale).
  """
  old = tuple(config.model.sources)
  unknown = [s for s in sources if s not in old]
  if unknown:
    raise ValueError(f'with_sources: {unknown} are not sources of this config {old}.')
  steps = dict(zip(old, config.anchors.steps or (None,) * len(old)))
  ratios = dict(zip(old, config.anchors.aspect_ratios))
  config.model.sources = tuple(sources)
  config.anchors.steps = (tuple(steps[s] for s in sources) if config.anchors.steps else None)
  config.anchors.aspect_ratios = tuple(ratios[s] for s in sources)
  config.anchors.min_sizes = config.anchors.max_sizes = None
  if sources[0] != 'conv4_3':
    config.anchors.first_scale = None
  return config
