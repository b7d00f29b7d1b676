"""SSD512 on COCO 2017, the paper's recipe.

Run (the paper starts from an ImageNet VGG16: convert one as docs/pretrained.md
shows, then add --config.model.init_checkpoint=/tmp/vgg16):
  python -m ssd_jax.main --config=configs/coco512.py --workdir=/tmp/coco512

Architecture, splits, schedule, optimiser and NMS come from
`ssd_jax.recipes` (shared by every config); this file holds what is
specific to this input size on this dataset: the default-box sizes.
"""
from ssd_jax import recipes


def get_config():
  config = recipes.preset('ssd512', 'coco')
  config.anchors.min_sizes = (20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8)
  config.anchors.max_sizes = (51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72)
  return config
