"""Training progress as the device completes it, not as Python dispatches it.

JAX returns from a jitted step at once and runs it later; a loop that counts
its calls runs ahead of the device (a bar at 4.5 steps/s while the device
finished 0.3) and then stalls at the first value it reads. `Completions`
keeps `depth` steps in flight (the dispatch pipelining), waits for the oldest
beyond that, and advances the bar and the throughput on completed steps only.
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Optional


class Completions:
  """Tracks dispatched steps until their outputs are ready.

  bar: a tqdm bar (or anything with update(n)), advanced once per completed step.
  depth: steps left in flight; the loop waits before running further ahead.
  clock: seconds (time.perf_counter; a test's own).
  """

  def __init__(self, bar, first_step: int, depth: int = 2,
               clock: Callable[[], float] = time.perf_counter):
    self.bar, self.depth, self.clock = bar, depth, clock
    self.completed = first_step
    self._queue = collections.deque()
    self._mark: Optional[tuple[int, float]] = None  # (step, time) the rate counts from

  def dispatched(self, step: int, output) -> None:
    """Step `step` (1-based: steps done once it completes) was dispatched;
    `output` is one of its arrays (block_until_ready says when it is done)."""
    self._queue.append((step, output))
    while len(self._queue) > self.depth:
      self._complete_oldest()

  def drain(self) -> None:
    """Waits for every dispatched step (before reading metrics or saving)."""
    while self._queue:
      self._complete_oldest()

  def _complete_oldest(self) -> None:
    step, output = self._queue.popleft()
    output.block_until_ready()
    now = self.clock()
    self.bar.update(step - self.completed)
    self.completed = step
    if self._mark is None:  # the first completion ends compilation: count from here
      self._mark = (step, now)
    self._last = (step, now)

  def steps_per_second(self) -> float:
    """Completed steps per second since the previous call (or the first
    completion), and restarts the count; nan before two completions."""
    if self._mark is None or self._last[0] == self._mark[0]:
      return float('nan')
    (s0, t0), (s1, t1) = self._mark, self._last
    self._mark = self._last
    return (s1 - s0) / max(t1 - t0, 1e-9)
