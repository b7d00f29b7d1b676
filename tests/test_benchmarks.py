"""The benchmark scripts of experiments/ in their smallest runs, so that none rots
between the runs that measure the figures of docs/benchmarks.md: each prints its
rows, and the ratios it prints are those of its own rates."""
import os
import pathlib
import re
import subprocess
import sys

from ssd_jax.testing import commands

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ('--configs', 'shapes', '--width', '0.125')


def bench(script: str, *args: str) -> str:
  out = subprocess.run([sys.executable, str(ROOT / 'experiments' / script), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
                       env=dict(os.environ, XLA_FLAGS=commands.ONE_DEVICE['XLA_FLAGS']))
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_bench_inference_prints_rates_and_their_ratios():
  out = bench('bench_inference.py', *TINY, '--batches', '1', '--repeats', '1')
  (row,) = [line.split() for line in out.splitlines() if line.startswith('shapes ')]
  ours, network, host_nms, xla_defaults = map(float, row[2:6])
  assert row[1] == '1' and min(ours, network, host_nms, xla_defaults) > 0, row
  printed = [float(r.rstrip('x')) for r in row[7:10]]
  expected = [ours / host_nms, ours / network, ours / xla_defaults]
  assert all(abs(p - e) <= 0.011 * max(1.0, e) for p, e in zip(printed, expected)), row


def test_bench_train_prints_the_step_rate_and_model_flops():
  out = bench('bench_train.py', *TINY, '--dtypes', 'float32', '--batches', '2',
              '--repeats', '1', '--no_torchvision')
  rows = [[c.strip() for c in line.split('|')[1:-1]] for line in out.splitlines()
          if line.startswith('| shapes ')]
  assert [r[:4] for r in rows] == [['shapes', '2', 'float32', 'ssd_jax']], out[-2000:]
  assert float(rows[0][4]) > 0 and float(rows[0][6]) > 0, rows


def test_bench_loss_times_the_batched_loss_against_its_references():
  out = bench('bench_loss.py', '--batch', '2', '--max-boxes', '5', '--repeats', '2')
  ms = [float(m) for m in re.findall(r'([\d.]+) ms', out)]
  ratios = [float(r) for r in re.findall(r'ratio +([\d.]+)x', out)]
  assert len(ms) == 3 and min(ms) > 0 and len(ratios) == 2, out
  assert all(abs(r - m / ms[0]) <= 0.06 * r + 0.06 for r, m in zip(ratios, ms[1:])), out
