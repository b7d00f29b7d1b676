"""The train step and the Detector lower for CUDA and TPU in a process without
TensorFlow, as a GPU or TPU machine that has only JAX runs them."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_train_step_and_detector_lower_for_cuda_and_tpu_without_tensorflow():
  out = subprocess.run([sys.executable, os.path.join(HERE, 'lowering_worker.py'), 'cuda', 'tpu'],
                       capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  results = {r['model']: r for r in map(json.loads, out.stdout.strip().splitlines())}
  assert set(results) == {'voc300', 'coco_ssdlite320'}
  for name, r in results.items():
    assert not r['tensorflow_loaded'], name
    for key in ('train_step_cuda', 'train_step_tpu', 'detector_cuda', 'detector_tpu'):
      assert r[key]['convolutions'] > 0, (name, key)
  # On accelerators depthwise convolutions stay grouped convolutions (the CPU's
  # shifted multiply-adds are for XLA:CPU only): 672 groups at SSDLite's C4 expansion.
  ssdlite = results['coco_ssdlite320']
  assert ssdlite['detector_cuda']['largest_group_count'] >= 672
  assert ssdlite['train_step_tpu']['largest_group_count'] >= 672
  assert results['voc300']['detector_cuda']['largest_group_count'] == 1
