"""Shared test setup: quiet TensorFlow, 8 simulated CPU devices, config loading."""
import os
import pathlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

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
