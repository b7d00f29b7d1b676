"""Every process of a multi-process test writes JAX's persistent compilation cache.

tests/conftest.py puts this folder on PYTHONPATH for the processes the tests
start. JAX writes the cache from process 0 only, and the other processes of a
multi-process run look up keys of their own (the CPU topology in each key
differs by process), so without this every host but the first compiled its
steps again on every run of the suite: about 7 CPU-seconds a host, a dozen
hosts a run. Here, once `jax._src.compiler` is imported, its cache write also
stores the executables of processes other than 0. Nothing is imported early;
if JAX's internals differ, nothing is changed. A sitecustomize further along
sys.path (a distribution's own) still runs.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

TARGET = 'jax._src.compiler'


def _write_on_every_host(compiler) -> None:
  """Wraps compiler._cache_write: processes other than 0 put their executable too."""
  original = getattr(compiler, '_cache_write', None)
  put = getattr(getattr(compiler, 'compilation_cache', None), 'put_executable_and_time', None)
  if original is None or put is None:
    return

  def cache_write(cache_key, compile_time_secs, module_name, backend, executable,
                  host_callbacks):
    if compiler.distributed.global_state.process_id == 0 or host_callbacks:
      return original(cache_key, compile_time_secs, module_name, backend, executable,
                      host_callbacks)
    try:
      put(cache_key, module_name, executable, backend, int(compile_time_secs))
    except Exception:  # noqa: BLE001 - a cache that cannot be written is only slower
      pass

  cache_write.every_host = True
  compiler._cache_write = cache_write  # noqa: SLF001


class _AfterImport(importlib.abc.MetaPathFinder):
  """Finds TARGET with the other finders, then patches it once it has run."""

  def find_spec(self, name, path, target=None):
    if name != TARGET:
      return None
    sys.meta_path.remove(self)
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    run = spec.loader.exec_module

    def exec_module(module):
      run(module)
      _write_on_every_host(module)

    spec.loader.exec_module = exec_module
    return spec


def _run_the_next_sitecustomize() -> None:
  """Runs the first other sitecustomize.py on sys.path, which this one hides."""
  here = os.path.dirname(os.path.abspath(__file__))
  for entry in sys.path:
    candidate = os.path.join(os.path.abspath(entry or '.'), 'sitecustomize.py')
    if os.path.dirname(candidate) != here and os.path.isfile(candidate):
      spec = importlib.util.spec_from_file_location('_hidden_sitecustomize', candidate)
      spec.loader.exec_module(importlib.util.module_from_spec(spec))
      return


sys.meta_path.insert(0, _AfterImport())
_run_the_next_sitecustomize()
