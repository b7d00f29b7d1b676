"""Model families found by name.

Every module of this package that defines `FAMILY` (a models.ssd.Family) is a
family: vgg16.py, mobilenet_v3.py, resnet.py. Configs name its backbone
(`model.backbone`), `ssd_jax.convert --format` its converters, `recipes.preset`
its architectures and `pretrained` its published weights, all looked up here,
so adding a family is adding a module. ssd.py holds the meta-architecture and
the part protocol, heads.py the shared heads, torch_weights.py the NumPy
helpers converters share.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil

from ssd_jax.models import heads, ssd


@functools.cache
def families() -> dict[str, ssd.Family]:
  """model.backbone name -> Family, for every family module of this package."""
  found = {}
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    family = getattr(importlib.import_module(f'{__name__}.{info.name}'), 'FAMILY', None)
    if family is None:
      continue
    if family.backbone in found:
      raise ValueError(f'two model families name the backbone {family.backbone!r}.')
    found[family.backbone] = family
  return found


def family(backbone: str) -> ssd.Family:
  """The family of `backbone`; ValueError naming model.backbone otherwise."""
  if backbone not in families():
    raise ValueError(f'model.backbone={backbone!r} is not one of {sorted(families())}.')
  return families()[backbone]


def backbone(name: str) -> ssd.BackbonePart:
  """The backbone part configs call `name`."""
  return family(name).part


def _table(field: str) -> dict:
  """The union of one field (a name -> value table) over the families."""
  table = {}
  for f in families().values():
    for name, value in getattr(f, field).items():
      if name in table:
        raise ValueError(f'two model families define {field} {name!r}.')
      table[name] = value
  return table


def all_heads() -> dict[str, ssd.HeadPart]:
  """model.head name -> HeadPart: heads.HEADS and the families' own."""
  return {**heads.HEADS, **_table('heads')}


def head(name: str) -> ssd.HeadPart:
  """The head configs call `name`; ValueError naming model.head otherwise."""
  table = all_heads()
  if name not in table:
    raise ValueError(f'model.head={name!r} is not one of {sorted(table)}.')
  return table[name]


def architectures() -> dict:
  """Preset name (e.g. 'ssd300') -> config sections, over every family."""
  return _table('architectures')


def converters() -> dict[str, ssd.Converter]:
  """ssd_jax.convert format -> Converter, over every family."""
  return _table('converters')


def published() -> dict[str, ssd.Weights]:
  """Published weights' name -> Weights, over every family."""
  return _table('published')
