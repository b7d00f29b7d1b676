"""SSDLite (MobileNetV3-Large) on the built-in `ssd_shapes` data, trained as the quickstart.

  python -m ssd_jax.main --config=configs/shapes_ssdlite.py --workdir=/tmp/shapes_ssdlite --mode=train_and_eval

The quickstart (configs/shapes.py) with SSDLite320's architecture in place of
SSD300's, made small the same way: 160x160 inputs and half the width. Its
recipe is the quickstart's (Adam from scratch, 1200 steps of 32, no zoom-out),
and the smallest default boxes are 0.1 of the image (16 px, SSDLite's 0.2 would
leave the smallest shapes, 15-18 px here, without a box at IoU >= 0.5). It is
what the export figures (docs/export.md) measure SSDLite's artifacts on.
"""
from ssd_jax import recipes


def get_config():
  config = recipes.preset('ssdlite320', 'voc')
  config.model.image_size, config.model.width = 160, 0.5
  config.anchors.s_min = 0.1
  return recipes.quickstart_training(config)
