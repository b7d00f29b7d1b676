"""experiments/device_report.py, the one command for a lent GPU, in its tiny CPU
mode and without TensorFlow, so that it cannot rot between loans."""
import os
import pathlib
import re
import subprocess
import sys

from ssd_jax.testing import commands

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_device_report_runs_tiny_without_tensorflow():
  out = subprocess.run([sys.executable, '-m', 'ssd_jax.testing.without_tensorflow',
                        str(ROOT / 'experiments' / 'device_report.py'), '--tiny'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                       env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=commands.QUICK_COMPILE))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().endswith('tensorflow imported: False'), out.stdout[-500:]
  rows = [line.split('|')[1:-1] for line in out.stdout.splitlines()
          if re.match(r'\| (voc|coco300_resnet50)', line)]
  seen = {(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows}
  assert seen == {('voc300', 'train', 'float32'), ('voc300', 'inference', 'bfloat16'),
                  ('voc_ssdlite320', 'inference', 'float32'),
                  ('coco300_resnet50', 'inference', 'float32')}, rows
  for r in rows:
    rate, tflops, mib = float(r[4]), float(r[5]), float(r[7])
    assert rate > 0 and tflops > 0 and mib > 0, r
  peers = [r for r in rows if r[0].strip() in ('voc_ssdlite320', 'coco300_resnet50')]
  assert len(peers) == 2 and all(float(r[8]) > 0 for r in peers), peers  # peers measured
