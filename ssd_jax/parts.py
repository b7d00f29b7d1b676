"""Model parts by the names configs use: `model.backbone` and `model.head`.

A backbone (models.BackbonePart) is a Flax module called as module(images, train)
on f[B, S, S, 3] normalised NHWC images; it returns one map f[B, h, w, c] per
prediction source (model.sources, in network order). Its settings are the
config section `backbone`. A head (models.HeadPart) maps those maps to f32[B, A, 4]
box offsets and f32[B, A, C] class logits, flattened source by source, then row,
column and box: the order of anchors.default_boxes. builders.build_model joins
the two into models.SSD.

Adding a backbone: a module that defines its BackbonePart, and its line below.
"""
from __future__ import annotations

from ssd_jax import models, ssdlite

BACKBONES = {
    'vgg16': models.VGG16,
    'mobilenet_v3_large': ssdlite.MOBILENET_V3_LARGE,
}
HEADS = {
    'ssd': models.MULTIBOX_HEAD,
    'ssdlite': ssdlite.SSDLITE_HEAD,   # per source: 3x3 depthwise + BatchNorm + ReLU6, 1x1
}


def backbone(name: str) -> models.BackbonePart:
  """The registered backbone `name`; ValueError naming model.backbone otherwise."""
  if name not in BACKBONES:
    raise ValueError(f'model.backbone={name!r} is not one of {sorted(BACKBONES)}.')
  return BACKBONES[name]


def head(name: str) -> models.HeadPart:
  """The registered head `name`; ValueError naming model.head otherwise."""
  if name not in HEADS:
    raise ValueError(f'model.head={name!r} is not one of {sorted(HEADS)}.')
  return HEADS[name]
