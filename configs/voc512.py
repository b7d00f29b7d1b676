"""SSD512 on PASCAL VOC 07+12, the paper's recipe.

Run (the paper starts from an ImageNet VGG16: convert one as docs/pretrained.md
shows, then add --config.model.init_checkpoint=/tmp/vgg16):
  python -m ssd_jax.main --config=configs/voc512.py --workdir=/tmp/voc512

Architecture, splits, schedule, optimiser and NMS come from
`ssd_jax.recipes` (shared by every config); this file holds what is
specific to this input size on this dataset: the default-box sizes.
"""
from ssd_jax import recipes


def get_config():
  config = recipes.preset('ssd512', 'voc')
  config.anchors.min_sizes = (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8)
  config.anchors.max_sizes = (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6)
  return config
