"""A web server of published weights on 127.0.0.1, for tests of ssd_jax.pretrained
(and of what uses weights by name: the Detector, training's init_from, the demo
notebook) without a network.

  server = weights_server.Server(folder)        # serves folder's files
  os.environ.update(weights_server.environment(server.url, manifest, cache))
  ...
  server.stop()
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import pathlib
import threading


class Server:
  """http.server on 127.0.0.1 serving `folder` from a thread; with `cut`, each
  file's whole length is announced but only its first half sent."""

  def __init__(self, folder: pathlib.Path, cut: bool = False):
    handler = functools.partial(_Cut if cut else _Quiet, directory=str(folder))
    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/'
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def stop(self):
    self.httpd.shutdown()
    self.httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


class _Cut(_Quiet):
  def do_GET(self):
    data = pathlib.Path(self.translate_path(self.path)).read_bytes()
    self.send_response(200)
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data[:len(data) // 2])
    self.wfile.flush()
    self.close_connection = True


def environment(url: str, manifest: pathlib.Path, cache: pathlib.Path) -> dict:
  """The variables that point ssd_jax.pretrained at a mirror: its URL, its
  manifest of {name: {file, sha256}} and the cache folder."""
  return {'SSD_JAX_WEIGHTS_URL': url, 'SSD_JAX_WEIGHTS_MANIFEST': str(manifest),
          'SSD_JAX_CACHE': str(cache)}


def publish(folder: pathlib.Path, model, name: str, file: str) -> pathlib.Path:
  """Saves a torch `model`'s state dict in `folder` as `file`, the published
  weights `name`, and a manifest pinning its SHA-256; the manifest's path."""
  import torch
  torch.save(model.state_dict(), folder / file)
  digest = hashlib.sha256((folder / file).read_bytes()).hexdigest()
  manifest = folder / 'manifest.json'
  manifest.write_text(json.dumps({name: {'file': file, 'sha256': digest}}))
  return manifest


def seeded_ssdlite(folder: pathlib.Path, name: str = 'ssdlite320_mobilenet_v3_large_coco'):
  """torchvision's SSDLite320 (COCO's 91 classes) seeded, its state dict saved in
  `folder` under the published file name of `name`, and a manifest with its
  SHA-256. Returns (the model in eval mode, the manifest's path)."""
  import torch
  import torchvision

  from ssd_jax import pretrained
  torch.manual_seed(0)
  model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
      weights=None, weights_backbone=None, num_classes=91).eval()
  return model, publish(folder, model, name, pretrained.PUBLISHED[name].file)
