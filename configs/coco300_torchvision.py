"""torchvision's ssd300_vgg16 (COCO) as an ssd_jax config.

Convert its weights, then evaluate (on COCO val2017, prepared in TFDS) or predict
with them (the converter writes this config as config.json next to the checkpoint,
so --config is optional):
  python -m ssd_jax.convert --format=torchvision_ssd300 --input=ssd300_vgg16_coco-b556d3b4.pth --output=/tmp/tv_ssd300
  python -m ssd_jax.main --mode=eval --workdir=/tmp/tv_ssd300
  python -m ssd_jax.main --mode=predict --workdir=/tmp/tv_ssd300 --input=photos/

The values (torchvision's default-box scales and size clipping, its input
mean, 91 classes in ssd_jax's order) are `recipes.torchvision_ssd300()`.
"""
from ssd_jax import recipes


def get_config():
  return recipes.torchvision_ssd300()
