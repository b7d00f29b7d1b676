"""SSD300 on COCO 2017, the paper's recipe.

Run (the paper starts from an ImageNet VGG16: convert one as docs/pretrained.md
shows, then add --config.model.init_checkpoint=/tmp/vgg16):
  python -m ssd_jax.main --config=configs/coco300.py --workdir=/tmp/coco300

Architecture, splits, schedule, optimiser and NMS come from
`ssd_jax.recipes` (shared by every config); this file holds what is
specific to this input size on this dataset: the default-box sizes.
"""
from ssd_jax import recipes


def get_config():
  config = recipes.preset('ssd300', 'coco')
  config.anchors.min_sizes = (21, 45, 99, 153, 207, 261)
  config.anchors.max_sizes = (45, 99, 153, 207, 261, 315)
  return config
