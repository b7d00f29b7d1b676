"""Label maps, defined once. Model class 0 is background; dataset label i is
model class i + 1."""
from __future__ import annotations

VOC_NAMES = (
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
    'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor',
)

# The 80 COCO categories in TFDS label order, and their official category ids
# (1..90 with gaps), which COCO results files and pycocotools use.
COCO_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
    'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack',
    'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball',
    'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
    'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
    'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
    'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
    'toothbrush',
)
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)

# The built-in synthetic dataset (ssd_jax/shapes_dataset.py): the class is the shape.
SHAPES_NAMES = ('circle', 'square', 'triangle', 'cross')

LABEL_MAPS = {'voc': VOC_NAMES, 'coco': COCO_NAMES, 'ssd_shapes': SHAPES_NAMES}

# torchvision's ssd300_vgg16 has 91 outputs indexed by COCO category id (0 is
# background; ten ids COCO does not use). ssd_jax orders them as the TFDS COCO
# pipeline numbers classes: model class j is torchvision's output
# TORCHVISION_CLASS_ORDER[j], i.e. COCO's 80 in label order, then the unused ids.
TORCHVISION_UNUSED_IDS = tuple(sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS)))
TORCHVISION_CLASS_ORDER = (0,) + COCO_CATEGORY_IDS + TORCHVISION_UNUSED_IDS
TORCHVISION_CLASS_NAMES = COCO_NAMES + tuple(f'unused_{i}' for i in TORCHVISION_UNUSED_IDS)


def dataset_class_names(dataset: str) -> tuple[str, ...]:
  """Names of the foreground classes of a dataset, in label order."""
  if dataset not in LABEL_MAPS:
    raise ValueError(f'data.name={dataset!r} has no label map; known: {sorted(LABEL_MAPS)}.')
  return LABEL_MAPS[dataset]


def num_model_classes(dataset: str) -> int:
  """Classes the detector predicts: the dataset's plus background."""
  return len(dataset_class_names(dataset)) + 1


def class_names(config) -> tuple[str, ...]:
  """Foreground class names, model class c being names[c - 1]: data.class_names,
  else the label map of data.name."""
  if config.data.class_names:
    return tuple(config.data.class_names)
  return dataset_class_names(config.data.name)


def category_ids(config) -> tuple[int, ...]:
  """Dataset category id of each model class 1..C-1, for COCO files:
  data.category_ids, else the official ids for COCO, else the model class itself."""
  if config.data.category_ids:
    return tuple(config.data.category_ids)
  if config.data.name == 'coco' and not config.data.class_names:
    return COCO_CATEGORY_IDS
  return tuple(range(1, len(class_names(config)) + 1))
