"""Makes TensorFlow (and TFDS) unimportable in this process, as on an accelerator
machine that has only JAX: what then imports it fails at once, naming it.

  python -m ssd_jax.testing.without_tensorflow SCRIPT [ARGS...]

runs SCRIPT so, and prints `tensorflow imported: False` after it (used by the
tests of the lowering and of experiments/device_report.py).
"""
import importlib.abc
import os
import runpy
import sys

BLOCKED = ('tensorflow', 'tensorflow_datasets')


class _Blocker(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError(f'{name} is not installed here (blocked: ssd_jax.testing.'
                        f'without_tensorflow)')
    return None


def block() -> None:
  """From now on, importing TensorFlow or TFDS raises ImportError."""
  if not any(isinstance(f, _Blocker) for f in sys.meta_path):
    sys.meta_path.insert(0, _Blocker())


if __name__ == '__main__':
  block()
  script, sys.argv = sys.argv[1], sys.argv[1:]
  sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT` does
  runpy.run_path(script, run_name='__main__')
  print(f'tensorflow imported: {any(m.split(".")[0] in BLOCKED for m in sys.modules)}')
