"""Makes TensorFlow (and TFDS) unimportable in this process, as on an accelerator
machine that has only JAX: what then imports it fails at once, naming it.

  python -m ssd_jax.testing.without_tensorflow SCRIPT [ARGS...]

runs SCRIPT so, and prints `tensorflow imported: False` after it (used by the
tests of the lowering and of experiments/device_report.py).
"""
import os
import runpy
import sys

BLOCKED = ('tensorflow', 'tensorflow_datasets')


def block() -> None:
  """From now on, importing TensorFlow or TFDS raises ModuleNotFoundError, and
  importlib.util.find_spec finds neither, as when they are not installed."""
  for name in BLOCKED:
    if sys.modules.get(name) is not None:
      raise RuntimeError(f'{name} was imported before without_tensorflow.block()')
    sys.modules[name] = None


def imported() -> bool:
  """Whether any module of TensorFlow or TFDS is loaded."""
  return any(m.split('.')[0] in BLOCKED and sys.modules[m] is not None for m in list(sys.modules))


if __name__ == '__main__':
  block()
  script, sys.argv = sys.argv[1], sys.argv[1:]
  sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python SCRIPT` does
  try:
    runpy.run_path(script, run_name='__main__')
  finally:  # also when the script ends with sys.exit
    print(f'tensorflow imported: {imported()}', flush=True)
