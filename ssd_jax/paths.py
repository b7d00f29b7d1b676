"""The one path layer for a run's files: local paths and URLs (gs://, s3://) alike.

Every file a workdir holds (config.json, the run lock, checkpoints, summaries,
evaluation reports, drawn detections) is reached through `path()`, an
`etils.epath.Path` (the layer orbax uses; for gs:// it goes through
tf.io.gfile or gcsfs). Local paths become absolute and behave as before.
"""
from __future__ import annotations

import os
import socket
import threading

from etils import epath

URL_SCHEMES = ('gs://', 's3://', 'az://', 'hf://')


def is_url(path) -> bool:
  """Whether `path` names a remote store (gs://bucket/...) rather than a local path."""
  return os.fspath(path).startswith(URL_SCHEMES)


def path(p) -> epath.Path:
  """`p` as an epath.Path: URLs as given, local paths absolute."""
  p = os.fspath(p)
  return epath.Path(p if is_url(p) else os.path.abspath(p))


def write_text_atomic(target: epath.Path, text: str) -> None:
  """Writes `text` to `target` so a reader sees the old file or the new one, never
  half of one (a local rename; on object stores a single upload is atomic already)."""
  if is_url(target):
    target.write_text(text)
    return
  partial = target.parent / (f'{target.name}.{socket.gethostname()}.{os.getpid()}.'
                             f'{threading.get_ident()}.tmp')
  # (named per writer thread: hosts, processes or threads writing one file at
  # once never share a partial file)
  partial.write_text(text)
  partial.replace(target)
