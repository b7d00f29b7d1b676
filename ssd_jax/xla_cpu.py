"""The compiler options ssd_jax's jitted functions get on CPU, per model family
(its `compiler_options`, ssd_jax/models/): which kinds of operation XLA:CPU
hands to the YNNPACK library.

JAX 0.10's XLA:CPU gives YNNPACK every convolution, every matrix product and
reductions (its `INDIVIDUAL_CONVOLUTION`, `INDIVIDUAL_DOT` and `REDUCE`
fusions) by default. On this project's 2-core AMD EPYC (Zen 3, AVX2, no
AVX-512), compiled in one process and timed alternately (medians):

- YNNPACK's convolutions ran slower than XLA's own: SSD300's forward pass at
  batch 1 took 686 ms with only the matrix products left to YNNPACK against 783
  by default, and the quickstart model's train forward and backward at batch 32
  316 ms against 415. Its reduction fusion made SSD300's forward 773 ms: one
  fusion took over most of the network.
- For SSDLite320 the reductions (BatchNorm's, around the depthwise layers) are
  what YNNPACK does best: its train forward and backward at batch 8 took
  1938 ms with matrix products and reductions against 2271 by default and
  5638 with matrix products alone; its forward at batch 1 21.3 ms against 26.4.

`experiments/bench_inference.py` and `bench_train.py` print the defaults (as
`xla_defaults`) beside these in the same run. The initial train state, which
runs once, compiles with LLVM's cheap passes instead (RUN_ONCE). GPU and TPU
compilations get no options. Set OPTIONS = {} for XLA's defaults on CPU too.
Where the installed XLA does not know an option (another jaxlib), the options
are dropped with a warning rather than failing every compilation. Nothing here
imports TensorFlow.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from ssd_jax import models

# config.model.backbone -> XLA debug options, from each family (benchmarks
# replace entries to compare); a backbone not listed gets XLA's defaults.
OPTIONS = {name: dict(family.compiler_options) for name, family in models.families().items()}


@functools.cache
def _accepted(items: tuple) -> bool:
  try:
    jax.jit(jnp.negative).lower(jnp.zeros(())).compile(compiler_options=dict(items))
    return True
  except jax.errors.JaxRuntimeError as e:
    logging.warning('XLA:CPU options %s not used (%s); compiling with XLA\'s defaults.',
                    dict(items), str(e).splitlines()[0])
    return False


# For programs that run once (the initial train state): LLVM's cheap passes, as
# compiling is all the time they take. On the 2-core Intel Xeon (2026-12-06, JAX
# 0.10.2), the quickstart model's initial state compiled in 1.4 s instead of 7.5,
# SSDLite320's in 7.5 s instead of 12.4, and each ran in under 0.2 s either way.
RUN_ONCE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _on_cpu(options: dict) -> Optional[dict]:
  """`options` when the default backend is CPU and its XLA accepts them, else None."""
  items = tuple(sorted(options.items()))
  if not items or jax.default_backend() != 'cpu' or not _accepted(items):
    return None
  return dict(items)


def compiler_options(backbone: str) -> Optional[dict]:
  """OPTIONS[backbone] on CPU (see _on_cpu), else None."""
  return _on_cpu(OPTIONS.get(backbone, {}))


def run_once_options() -> Optional[dict]:
  """RUN_ONCE on CPU (see _on_cpu), else None."""
  return _on_cpu(RUN_ONCE)


class Jitted:
  """`jax.jit(fun, compiler_options=options, **kwargs)`, which JAX refuses to call
  inside another trace (jit, vmap, grad, eval_shape): there, recognised by a
  traced argument, the same function jitted without the options runs instead
  (it is inlined into the outer program, whose own options then apply).
  Attributes such as `lower` and `trace` are the top-level function's."""

  def __init__(self, fun: Callable, options: Optional[dict], **kwargs: Any):
    self._top = jax.jit(fun, compiler_options=options, **kwargs)
    self._nested = jax.jit(fun, **kwargs) if options else self._top

  def __call__(self, *args, **kwargs):
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs)))
    return (self._nested if traced else self._top)(*args, **kwargs)

  def __getattr__(self, name: str):
    return getattr(self._top, name)


def jit(fun: Callable, config, **kwargs: Any) -> Jitted:
  """`jax.jit(fun, **kwargs)` with the compiler options of config.model.backbone
  at the top level (see Jitted). Call it once the backend is chosen (e.g. after
  jax.distributed.initialize): it asks for the default backend."""
  return Jitted(fun, compiler_options(config.model.backbone), **kwargs)
