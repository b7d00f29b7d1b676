"""`python -m ssd_jax.main` whose training data fails after nine batches: one
host's own fault in the middle of a multi-host run (tests/test_multihost.py).

Usage: python tests/faulty_host.py <the flags of ssd_jax.main>
"""
import runpy
import sys

from ssd_jax.data import input_pipeline

_checked_batches = input_pipeline._checked_batches  # noqa: SLF001


def _failing_batches(ds, config):
  for i, batch in enumerate(_checked_batches(ds, config)):
    if i == 9:
      raise OSError('reading the training data failed (injected by the test)')
    yield batch


input_pipeline._checked_batches = _failing_batches  # noqa: SLF001
sys.argv = ['ssd_jax.main'] + sys.argv[1:]
runpy.run_module('ssd_jax.main', run_name='__main__', alter_sys=True)
