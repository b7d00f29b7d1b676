"""The SSD meta-architecture and what a model family gives it.

`SSD` joins a backbone's source maps to a head. A family module in this
package (vgg16.py, mobilenet_v3.py, resnet.py, ...) defines `FAMILY`, a
`Family`: its backbone part, any heads of its own, its architecture presets,
its XLA:CPU compile options, its converters of published checkpoints and the
names of its published weights. ssd_jax.models finds the families by name (a
package of one's own can add one through an entry point: ssd_jax/models/__init__.py).

Conventions every part keeps:
  - A backbone is called as module(images, train) on f[B, S, S, 3] normalised
    NHWC images (builders.normalise_images) and returns one map f[B, h, w, c]
    per prediction source (model.sources, in network order).
  - A head maps those maps to f32[B, A, 4] box offsets (encoded against the
    default boxes, box_utils.encode) and f32[B, A, C] class logits (class 0
    background), flattened source by source, then row, column and box: the
    order of anchors.default_boxes.
  - `train` selects batch statistics in BatchNorm layers (their running averages
    are then updated: apply with mutable=['batch_stats']).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn

# What each parameter is for, by the module that owns it (builders.trace_model, Task.roles):
# 'weight' multiplies features (convolution and dense kernels, the L2Norm scale),
# 'bias' is added to them, 'norm' is a normalisation layer's own scale or offset.
ROLES = ('weight', 'bias', 'norm')


class SSD(nn.Module):
  """The whole detector: a backbone's source maps through a head.

  Call with f[B, S, S, 3] normalised RGB images; returns float32 box offsets
  [B, A, 4] and class logits [B, A, num_classes] (see the module doc).
  """
  backbone: nn.Module
  head: nn.Module

  def __call__(self, images, train: bool = False):
    return self.head(self.backbone(images, train=train), train=train)


def check_sources(sources: Sequence[str], order: Sequence[str]) -> None:
  """ValueError unless `sources` are distinct names from `order`, in its order."""
  if (any(s not in order for s in sources) or len(set(sources)) != len(sources)
      or list(sources) != sorted(sources, key=list(order).index)):
    raise ValueError(f'model.sources={tuple(sources)} must be distinct layer names in network '
                     f'order, chosen from {tuple(order)}.')


@dataclasses.dataclass(frozen=True)
class BackbonePart:
  """A backbone as configs name it (model.backbone).

  Attributes:
    settings: defaults of its config section `backbone` (config_lib.base_config).
    layers: backbone settings -> the names of the layers that can be
      prediction sources (model.sources), in network order.
    build: (model config, backbone settings, dtype, param_dtype) -> the module,
      called as module(images, train) -> one map per source.
  """
  settings: Mapping[str, Any]
  layers: Callable[[Any], tuple[str, ...]]
  build: Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class HeadPart:
  """A head as configs name it (model.head): build(model config, boxes per
  location, dtype, param_dtype) -> the module, called as module(maps, train) ->
  (offsets, logits)."""
  build: Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class Converter:
  """A published PyTorch checkpoint layout, as `python -m ssd_jax.convert --format=NAME`.

  Attributes:
    load: (torch_weights.StateDict, options) -> (variables {'params', maybe
      'batch_stats'}, facts for conversion.json). options: the command's
      settings (channel_order, mean_rgb), each loader takes what it needs.
    config: for a whole detector, () -> the config its weights reproduce
      (written as the output's config.json); None for a base.
    base: for a base, () -> a config of the architecture its shapes are checked
      against (any SSD of the family at width 1).
    about: what the checkpoint is and how its weights map, in a sentence
      (`python -m ssd_jax.convert --help` lists it).
  """
  load: Callable[..., tuple[dict, dict]]
  config: Optional[Callable[[], Any]] = None
  base: Optional[Callable[[], Any]] = None
  about: str = ''

  @property
  def kind(self) -> str:
    """'detector' (it comes with a config) or 'base'."""
    return 'detector' if self.config else 'base'


@dataclasses.dataclass(frozen=True)
class Weights:
  """Published weights: the file its publisher serves, how to check and read it.

  sha256 is the file's SHA-256, or the prefix its publisher gives (torchvision
  names each file with the first 8 hex digits and torch.hub checks those);
  None where the publisher gives none (only the length the server announces
  is then checked; a mirror's manifest can pin one). `about` says what the
  weights are (`python -m ssd_jax.pretrained` lists it).
  """
  file: str
  sha256: Optional[str]
  format: str          # the Converter that reads it
  base_url: str = 'https://download.pytorch.org/models/'
  about: str = ''


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family, as a module of ssd_jax.models defines it (`FAMILY`).

  Attributes:
    backbone: the name configs give model.backbone.
    part: its BackbonePart.
    architectures: preset name -> config sections (what the input size fixes),
      which recipes.preset combines with a dataset's.
    compiler_options: XLA:CPU debug options its jitted functions compile with
      (xla_cpu.py); {} for XLA's defaults.
    converters: ssd_jax.convert format -> Converter.
    published: published weights' name -> Weights (pretrained.py).
    heads: heads of its own, by model.head name (heads.py has the shared ones).
    imagenet: the published ImageNet base its recipe trains from (named in a
      warning when training starts from scratch), if any.
  """
  backbone: str
  part: BackbonePart
  architectures: Mapping[str, Mapping[str, Any]]
  compiler_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
  converters: Mapping[str, Converter] = dataclasses.field(default_factory=dict)
  published: Mapping[str, Weights] = dataclasses.field(default_factory=dict)
  heads: Mapping[str, HeadPart] = dataclasses.field(default_factory=dict)
  imagenet: Optional[str] = None
