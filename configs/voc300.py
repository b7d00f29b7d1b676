"""SSD300 on PASCAL VOC 07+12, the paper's recipe.

Run (the paper starts from an ImageNet VGG16: convert one as docs/pretrained.md
shows, then add --config.model.init_checkpoint=/tmp/vgg16):
  python -m ssd_jax.main --config=configs/voc300.py --workdir=/tmp/voc300

Architecture, splits, schedule, optimiser and NMS come from
`ssd_jax.recipes` (shared by every config); this file holds what is
specific to this input size on this dataset: the default-box sizes.
"""
from ssd_jax import recipes


def get_config():
  config = recipes.preset('ssd300', 'voc')
  config.anchors.min_sizes = (30, 60, 111, 162, 213, 264)
  config.anchors.max_sizes = (60, 111, 162, 213, 264, 315)
  return config
