"""Shared test setup: quiet TensorFlow, 8 simulated CPU devices, a compilation
cache, config loading."""
import os
import pathlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# Many tests compile the same small train and eval steps (in workers and in the
# subprocesses they start, which inherit this): JAX's persistent cache compiles
# each once per run, and re-runs start warm. Keys include the JAX version and flags.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(__file__).resolve().parent.parent / '.jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import pytest  # noqa: E402

try:  # torch's compiler; loading its native library after TensorFlow's segfaults, so first.
  import triton  # noqa: E402, F401  (comes with the CUDA torch wheels the converter tests use)
except ImportError:
  pass

from ssd_jax import config_lib  # noqa: E402

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'


@pytest.fixture(scope='session')
def load_config():
  """Returns a function: config name (e.g. 'voc300') -> a fresh ConfigDict."""
  return lambda name: config_lib.load(str(CONFIG_DIR / f'{name}.py'))
