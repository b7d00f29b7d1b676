"""Progress counts completed steps: a device slower than dispatch moves the bar
at its own pace, and the rate is completions over their times."""
import math
import time

import jax
import jax.numpy as jnp
import pytest

from ssd_jax import progress


class Bar:
  def __init__(self, n=0):
    self.n = n

  def update(self, k):
    self.n += k


class SlowDevice:
  """Steps finish one per `seconds` of a fake clock, in order, when waited on."""

  def __init__(self, seconds, finished):
    self.seconds, self.now, self.finished = seconds, 0.0, finished

  def output(self, step):
    device = self

    class Output:
      def block_until_ready(self):
        while device.finished < step:
          device.finished += 1
          device.now += device.seconds
        return self
    return Output()


def test_the_bar_moves_at_the_devices_pace_not_the_dispatch():
  device, bar = SlowDevice(seconds=2.0, finished=10), Bar(10)  # resumed at step 10
  done = progress.Completions(bar, first_step=10, depth=2, clock=lambda: device.now)
  for step in range(11, 21):  # dispatch is instant
    done.dispatched(step, device.output(step))
    assert bar.n == max(10, step - 2) == device.finished
  assert bar.n == 18 and device.now == 16.0  # two still in flight
  done.drain()
  assert bar.n == 20 and device.now == 20.0
  assert done.steps_per_second() == pytest.approx(9 / 18.0)  # from the first completion
  assert math.isnan(done.steps_per_second())  # nothing completed since


def test_real_steps_are_waited_for():
  bar = Bar()
  done = progress.Completions(bar, first_step=0, depth=1)
  step = jax.jit(lambda x: x @ x)
  x = jnp.ones((300, 300))
  outputs = []
  for k in range(1, 5):
    outputs.append(step(x))
    done.dispatched(k, outputs[-1])
  assert bar.n == 3
  done.drain()
  assert bar.n == 4 and done.steps_per_second() > 0
  start = time.perf_counter()
  jax.block_until_ready(outputs)  # all were complete already
  assert time.perf_counter() - start < 0.5
