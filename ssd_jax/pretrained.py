"""Published weights by name: downloaded once, verified, converted, then reused offline.

  Detector.from_pretrained('ssdlite320_mobilenet_v3_large_coco')
  python -m ssd_jax.main --mode=predict --pretrained=ssdlite320_mobilenet_v3_large_coco --input=photos/
  --config.model.init_from=vgg16_imagenet          (training: fine-tune from it)

and this lists the names:
  python -m ssd_jax.pretrained

Each name is a PyTorch checkpoint its publisher serves, with the ssd_jax.convert
format that reads it; the model families list them (ssd_jax/models/: each
family module's PUBLISHED). torchvision names each file with the first 8 hex
digits of its SHA-256 and its loader (torch.hub, check_hash) verifies that
prefix; ssd_jax verifies the same, and a full SHA-256 when one is known.

Files live under the cache folder ($SSD_JAX_CACHE, default
~/.cache/ssd_jax): `downloads/<file>` as published, `<name>/` converted (a
workdir: checkpoints/0, conversion.json and, for a detector, config.json).
Each is written under a temporary name and renamed when complete, so an
interrupted download or conversion leaves nothing that a later use would
take for whole. A mirror is named by $SSD_JAX_WEIGHTS_URL (the folder that
holds the files); $SSD_JAX_WEIGHTS_MANIFEST names a JSON file of
{name: {"file", "sha256"}} for a mirror that serves other files.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from typing import Optional

from ssd_jax import convert  # reads .pth files with torch: pip install -e ".[convert]"
from ssd_jax import models
from ssd_jax.models import ssd

# Every family's published weights (ssd_jax/models/: each module's PUBLISHED).
PUBLISHED = models.published()
Weights = ssd.Weights


class DownloadError(OSError):
  """A download failed or its bytes are not the published file; nothing was kept."""


def cache_dir() -> str:
  return os.path.abspath(os.environ.get('SSD_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'ssd_jax'))


def weights(name: str) -> Weights:
  """The published weights of `name` (with a mirror's manifest applied)."""
  if name not in PUBLISHED:
    raise ValueError(f'no published weights named {name!r}; the names are '
                     f'{", ".join(sorted(PUBLISHED))}.')
  w = PUBLISHED[name]
  manifest = os.environ.get('SSD_JAX_WEIGHTS_MANIFEST')
  if manifest:
    with open(manifest) as f:
      entry = json.load(f).get(name)
    if entry:
      w = dataclasses.replace(w, file=entry['file'], sha256=entry['sha256'].lower())
  return w


def url(w: Weights) -> str:
  base = os.environ.get('SSD_JAX_WEIGHTS_URL') or w.base_url
  return base.rstrip('/') + '/' + w.file


def _download(source: str, target: str, expected: Optional[str]) -> None:
  """source -> target, verified against `expected` (a SHA-256 or its prefix; None:
  the publisher gives none, which is said); a partial or wrong file is removed."""
  partial = f'{target}.partial-{os.getpid()}'
  print(f'downloading {source}', file=sys.stderr, flush=True)
  try:
    with urllib.request.urlopen(source, timeout=60) as response, open(partial, 'wb') as out:
      shutil.copyfileobj(response, out, 1 << 20)
      announced = response.headers.get('Content-Length')
    size = os.path.getsize(partial)
    if announced is not None and size != int(announced):
      raise DownloadError(f'downloading {source} failed (the connection ended after {size} of '
                          f'{announced} bytes); nothing was kept. Try again, or set '
                          f'$SSD_JAX_WEIGHTS_URL to a mirror.')
    got = convert.sha256(partial)
    if expected is None:
      print(f'{source}: its publisher gives no checksum; its SHA-256 is {got} (pin it with '
            f'$SSD_JAX_WEIGHTS_MANIFEST).', file=sys.stderr, flush=True)
    elif not got.startswith(expected):
      raise DownloadError(f'{source} is not the published file: its SHA-256 is {got}, '
                          f'expected {expected}{"..." if len(expected) < 64 else ""}. Nothing '
                          f'was kept; check the mirror ($SSD_JAX_WEIGHTS_URL) and try again.')
    os.replace(partial, target)
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    if isinstance(e, DownloadError):
      raise
    raise DownloadError(f'downloading {source} failed ({e}); nothing was kept. Try again, or '
                        f'set $SSD_JAX_WEIGHTS_URL to a mirror.') from e
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def fetch(name: str) -> str:
  """The path of `name`'s published file in the cache, downloaded if missing."""
  w = weights(name)
  folder = os.path.join(cache_dir(), 'downloads')
  os.makedirs(folder, exist_ok=True)
  target = os.path.join(folder, w.file)
  if not os.path.isfile(target):
    _download(url(w), target, w.sha256)
  return target


def converted(name: str) -> str:
  """The workdir of `name` converted for ssd_jax (downloaded and converted once)."""
  target = os.path.join(cache_dir(), name)
  if is_converted(name):
    return target
  fmt, source = weights(name).format, fetch(name)
  partial = f'{target}.partial-{os.getpid()}'
  shutil.rmtree(partial, ignore_errors=True)
  try:
    convert.convert(fmt, source, partial)
    try:
      os.replace(partial, target)
    except OSError:  # another process converted it meanwhile
      if not os.path.isfile(os.path.join(target, 'conversion.json')):
        raise
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return target


def is_converted(name: str) -> bool:
  """Whether `name` is converted in the cache already (its use needs no network)."""
  return os.path.isfile(os.path.join(cache_dir(), name, 'conversion.json'))


def listing() -> str:
  """A table of every published name, one a line under a header: name, the
  format that converts it, 'detector' or 'base', 'cached' where the cache holds
  it converted, and what it is."""
  formats = convert.formats()
  rows = [('name', 'format', 'kind', 'cache', 'what')] + [
      (name, w.format, formats[w.format].kind,
       'cached' if is_converted(name) else '-', w.about)
      for name, w in sorted(PUBLISHED.items())]
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  return '\n'.join('  '.join(f'{v:<{n}}' for v, n in zip(r[:4], widths)) + '  ' + r[4]
                   for r in rows)


if __name__ == '__main__':
  if sys.argv[1:]:
    sys.exit(f'python -m ssd_jax.pretrained takes no arguments (got {" ".join(sys.argv[1:])}); '
             f'it lists the names that --pretrained and model.init_from take.')
  print(f'published weights (cache: {cache_dir()}):')
  print(listing())
