"""experiments/demo.ipynb runs headless, end to end, with quick settings."""
import pathlib

import nbformat
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / 'experiments' / 'demo.ipynb'


def test_demo_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv('SSD_JAX_DEMO_QUICK', '1')
  monkeypatch.setenv('SSD_JAX_DEMO_WORKDIR', str(tmp_path / 'run'))
  monkeypatch.setenv('SSD_JAX_DEMO_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('XLA_FLAGS', '')  # one device in the kernel, as in Colab
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()
  outputs = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                    for o in c.get('outputs', []))
  assert 'VOC mAP@0.5' in outputs
  assert len(list((tmp_path / 'run' / 'detections').glob('*.jpg'))) == 2
  assert any('image/png' in o.get('data', {}) for c in nb.cells if c.cell_type == 'code'
             for o in c.get('outputs', []))
