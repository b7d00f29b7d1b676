"""Model families found by name.

Every module of this package that defines `FAMILY` (a models.ssd.Family) is a
family: vgg16.py, mobilenet_v3.py, resnet.py. Configs name its backbone
(`model.backbone`), `ssd_jax.convert --format` its converters, `recipes.preset`
its architectures and `pretrained` its published weights, all looked up here,
so adding a family is adding a module. A family may also live in a package of
its own: one installed with an entry point of the group `ssd_jax.families`
naming its module is found the same way. ssd.py holds the meta-architecture
and the part protocol, heads.py the shared heads, torch_weights.py the NumPy
helpers converters share.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from importlib import metadata
from typing import Callable

from ssd_jax.models import heads, ssd


# Installed packages name their family modules under this entry-point group.
ENTRY_POINT_GROUP = 'ssd_jax.families'


def _modules() -> list[tuple[str, Callable[[], object], bool]]:
  """(where, load, installed) of every candidate family module: this package's
  modules by name (those without FAMILY are helpers), then the installed entry
  points of ENTRY_POINT_GROUP (each must define it)."""
  names = sorted(f'{__name__}.{m.name}' for m in pkgutil.iter_modules(__path__))
  here = [(name, functools.partial(importlib.import_module, name), False) for name in names]
  points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
  return here + [(f'the entry point {e.name} = {e.value} of {ENTRY_POINT_GROUP} '
                  f'(package {e.dist.name if e.dist else "?"})', e.load, True) for e in points]


def _load(where: str, load: Callable[[], object], installed: bool) -> object:
  """The module's FAMILY (None for a helper module of this package)."""
  try:
    module = load()
  except ImportError as e:
    if not installed:
      raise
    raise ImportError(f'{where} cannot be imported ({e}); fix or uninstall that package.') from e
  family = getattr(module, 'FAMILY', None)
  if installed and not isinstance(family, ssd.Family):
    raise TypeError(f'{where} names a module without FAMILY (a ssd_jax.models.ssd.Family).')
  return family


@functools.cache
def families() -> dict[str, ssd.Family]:
  """model.backbone name -> Family, for every family module of this package and
  every installed one (ENTRY_POINT_GROUP)."""
  found, source = {}, {}
  for where, load, installed in _modules():
    family = _load(where, load, installed)
    if family is None:
      continue
    if family.backbone in found:
      raise ValueError(f'{source[family.backbone]} and {where} both name the backbone '
                       f'{family.backbone!r}; rename one family\'s backbone.')
    found[family.backbone], source[family.backbone] = family, where
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
