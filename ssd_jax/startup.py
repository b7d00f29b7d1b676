"""A command's start: Python's cyclic garbage collector is off while the
command imports its libraries (`begin`, before them), then every object the
imports made is moved out of its sight and it is on again (`done`).

TensorFlow, JAX and Flax leave about 440,000 objects, which each full
collection would otherwise walk again: 1.2 of a short training run's 18
CPU-seconds were collection with them in sight, 0.15 with them frozen; an
export spends about 0.8 s less of its 5.5.
"""
import gc


def begin() -> None:
  """Before the command's imports (in its `if __name__ == '__main__':`)."""
  gc.disable()


def done() -> None:
  """After them: what they made is frozen (gc.freeze), collection back on."""
  gc.freeze()
  gc.enable()
