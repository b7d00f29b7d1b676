"""experiments/demo.ipynb runs headless, end to end, with quick settings, offline:
its pretrained weights come from a server on 127.0.0.1 (seeded torchvision
SSDLite320 weights under the published name)."""
import json
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from ssd_jax.testing import commands, weights_server

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / 'experiments' / 'demo.ipynb'


def test_demo_notebook_runs(tmp_path, monkeypatch):
  pytest.importorskip('torchvision')
  (tmp_path / 'mirror').mkdir()
  _, manifest = weights_server.seeded_ssdlite(tmp_path / 'mirror')
  server = weights_server.Server(tmp_path / 'mirror')
  for name, value in weights_server.environment(server.url, manifest,
                                                tmp_path / 'cache').items():
    monkeypatch.setenv(name, value)
  monkeypatch.setenv('SSD_JAX_DEMO_QUICK', '1')
  monkeypatch.setenv('SSD_JAX_DEMO_WORKDIR', str(tmp_path / 'run'))
  monkeypatch.setenv('SSD_JAX_DEMO_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('XLA_FLAGS', commands.QUICK_COMPILE)  # one device, as in Colab
  nb = nbformat.read(NOTEBOOK, as_version=4)
  try:
    NotebookClient(nb, timeout=600, kernel_name='python3',
                   resources={'metadata': {'path': str(tmp_path)}}).execute()
  finally:
    server.stop()
  outputs = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                    for o in c.get('outputs', []))
  assert 'VOC mAP@0.5' in outputs
  assert len(list((tmp_path / 'run' / 'detections').glob('*.jpg'))) == 2
  pictures = [c for c in nb.cells if c.cell_type == 'code'
              and any('image/png' in o.get('data', {}) for o in c.get('outputs', []))]
  assert len(pictures) >= 3  # the photo, the test images, the curves
  assert (tmp_path / 'cache' / 'ssdlite320_mobilenet_v3_large_coco' / 'config.json').is_file()
  # the fine-tuned run started from the converted weights, not from scratch
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['model']['init_from'] == \
      'ssdlite320_mobilenet_v3_large_coco'
