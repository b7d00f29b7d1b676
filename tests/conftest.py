"""Shared test setup: quiet TensorFlow, 8 simulated CPU devices, a compilation
cache, config loading."""
import gc
import os
import pathlib
import tempfile

from ssd_jax.testing.commands import QUICK_COMPILE

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow imports Keras's optimisers when imported (0.9 s of its 4 s here);
# ssd_jax uses no Keras, and asked for the legacy tf_keras, which is not
# installed, TensorFlow skips it. For these processes and the ones they start.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
# The test models compile for longer than they run: LLVM's cheap passes and the
# older fusion emitters in these processes and the ones they start (tests that run
# many steps: full_optimisation).
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {QUICK_COMPILE}')
# Many tests compile the same small train and eval steps (in workers and in the
# subprocesses they start, which inherit this): JAX's persistent cache compiles
# each once per run, and re-runs start warm. Keys include the JAX version and
# flags, not the cache's path: one cache in the user's cache folder serves every
# clone and worktree of this machine. It is not size-limited (JAX's limit lists
# and locks the folder on every write); delete it whenever (a run reads about
# 4,100 entries, 110 MB).
_CACHE_HOME = pathlib.Path(os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(_CACHE_HOME / 'ssd_jax' / 'test_compilations'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
# Left on, JAX adds a GPU autotuning folder under the cache (and, on several hosts,
# whether this is host 0) to every compile's options, so to every key: the keys then
# change with the cache's path and the process id. Off, a cache copied to another
# clone, and every host of a multi-process test, hit the same entries.
os.environ.setdefault('JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES', 'none')
# JAX writes that cache from process 0 only; in multi-process tests the other
# hosts' keys are their own, so they compiled again on every run.
# ssd_jax/testing/every_host_caches/sitecustomize.py lets them write too.
_EVERY_HOST_CACHES = pathlib.Path(__file__).resolve().parent.parent / 'ssd_jax' / 'testing' / \
    'every_host_caches'
os.environ['PYTHONPATH'] = os.pathsep.join(
    filter(None, [str(_EVERY_HOST_CACHES), os.environ.get('PYTHONPATH')]))

import pytest  # noqa: E402

try:  # torch's compiler; loading its native library after TensorFlow's segfaults, so first.
  import triton  # noqa: E402, F401  (comes with the CUDA torch wheels the converter tests use)
except ImportError:
  pass

from ssd_jax import config_lib  # noqa: E402

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'
# The modules whose tests run longest (several processes, a notebook, a training
# run), collected first: xdist hands them out first, and the two workers finish
# on short tests together instead of one waiting on the other's last long test.
LONGEST_FIRST = ('test_multihost.py', 'test_quickstart.py', 'test_notebook.py',
                 'test_documented_commands.py', 'test_pretrained.py', 'test_resnet.py')


def pytest_collection_finish(session):
  """The objects of every module the tests import (TensorFlow, JAX, torch), moved
  out of the sight of Python's cyclic garbage collector, whose full collections
  would walk them all again, hundreds of times in a worker's run."""
  gc.freeze()


@pytest.fixture(scope='session', autouse=True)
def _temp_folder_inside_pytests(tmp_path_factory):
  """Temporary files of each worker and of the processes its tests start go under
  pytest's own folder, which pytest prunes: TFDS leaves an empty tmp*tfds folder
  behind in the temporary folder whenever it opens a dataset that is not prepared."""
  os.environ['TMPDIR'] = str(tmp_path_factory.mktemp('tmp'))
  tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: modules stay whole


@pytest.fixture
def full_optimisation(monkeypatch):
  """XLA's default LLVM optimisation for what the test compiles through
  ssd_jax.xla_cpu (every model family's steps and detectors), for tests whose
  steps run long enough to repay it (XLA_FLAGS above asks for the cheap passes)."""
  from ssd_jax import xla_cpu
  for backbone in list(xla_cpu.OPTIONS):
    monkeypatch.setitem(xla_cpu.OPTIONS, backbone, {
        **xla_cpu.OPTIONS[backbone], 'xla_backend_optimization_level': 3,
        'xla_llvm_disable_expensive_passes': False, 'xla_cpu_use_fusion_emitters': True})


@pytest.fixture
def cpu_path(monkeypatch):
  """layers' CPU pooling gradient whatever the device count, as a one-device process
  uses it (eight devices here turn it off); only for tests that run no collective."""
  from ssd_jax import layers
  monkeypatch.setattr(layers, 'cpu_gradients_apply', lambda: layers.USE_CPU_GRADIENTS)


@pytest.fixture(scope='session')
def load_config():
  """Returns a function: config name (e.g. 'voc300') -> a fresh ConfigDict."""
  return lambda name: config_lib.load(str(CONFIG_DIR / f'{name}.py'))
