"""Exported artifacts, loaded and run: one runtime per format of ssd_jax.export.

A runtime is made from the artifact's file, its export.json and its config,
and maps uint8 images [1, H, W, 3] to the artifact's outputs as NumPy
(lowering.OUTPUTS). `Detector.from_exported(folder)` picks the runtime from
the folder's export.json and gives the Detector's `detect` over it, so
evaluation (evaluate.evaluate_detectors), tests and benchmarks treat every
format alike. TensorFlow is imported for saved_model and tflite only;
onnxruntime for onnx; the jax runtime needs neither.
"""
from __future__ import annotations

import os
import warnings

import jax
import numpy as np

from ssd_jax import xla_cpu

INFO_FILE = 'export.json'  # in every export folder: class names, how it was exported


class Runtime:
  """An artifact file, loaded; call it on u8[1, H, W, 3]."""

  FILE = ''
  FORMAT = ''

  def __init__(self, file: str, info: dict, config):
    self.info = info
    self.load(file, config)

  def load(self, file: str, config) -> None:
    raise NotImplementedError

  def __call__(self, images: np.ndarray) -> dict:
    raise NotImplementedError


class JaxRuntime(Runtime):
  """`--format=jax`: a jax.export.Exported, jitted with the config's CPU options."""

  FILE, FORMAT = 'detector.jax', 'jax'

  def load(self, file: str, config) -> None:
    with open(file, 'rb') as f:
      self.exported = jax.export.deserialize(bytearray(f.read()))
    self._call = xla_cpu.jit(self.exported.call, config)

  def __call__(self, images: np.ndarray) -> dict:
    return jax.device_get(self._call(images))


class SavedModelRuntime(Runtime):
  """`--format=saved_model`: its `serving_default` signature in TensorFlow."""

  FILE, FORMAT = 'saved_model.pb', 'saved_model'

  def load(self, file: str, config) -> None:
    import tensorflow as tf
    self._serve = tf.saved_model.load(os.path.dirname(file)).signatures['serving_default']

  def __call__(self, images: np.ndarray) -> dict:
    """The image repeated to the exported batch; the first row's outputs."""
    import tensorflow as tf
    batch = np.repeat(images, self.info['batch'], axis=0)
    return {k: v.numpy()[:1] for k, v in self._serve(images=tf.constant(batch)).items()}


# TFLite's detection post-process op run on N >= 2 threads skips its class column
# N; the export puts zero columns at 2..TFLITE_MAX_THREADS (tflite.op_columns),
# so a runtime of more threads would lose a class.
TFLITE_MAX_THREADS = 32


# TensorFlow's warning that LiteRT's package (ai_edge_litert, not a dependency)
# replaces tf.lite.Interpreter: TensorFlow 2.21 still ships and runs it, and the
# models run in either. ssd_jax's interpreters, TFLite's full-int8 calibration and
# tf2onnx's reading of TFLite models each make one.
TFLITE_DEPRECATION = '.*tf.lite.Interpreter is deprecated'


def tflite_interpreter(**kwargs):
  """tf.lite.Interpreter(**kwargs), without TFLITE_DEPRECATION's warning."""
  import tensorflow as tf
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message=TFLITE_DEPRECATION)
    return tf.lite.Interpreter(**kwargs)


class TfliteRuntime(Runtime):
  """`--format=tflite`: its `serving_default` signature in TFLite's interpreter,
  on every core, up to TFLITE_MAX_THREADS threads."""

  FILE, FORMAT = 'detector.tflite', 'tflite'

  def load(self, file: str, config) -> None:
    threads = min(os.cpu_count() or 1, TFLITE_MAX_THREADS)
    self._interpreter = tflite_interpreter(model_path=file, num_threads=threads)
    self._serve = self._interpreter.get_signature_runner('serving_default')

  def __call__(self, images: np.ndarray) -> dict:
    return self._serve(images=images)


class OnnxRuntime(Runtime):
  """`--format=onnx`: the graph in ONNX Runtime on CPU (no TensorFlow needed)."""

  FILE, FORMAT = 'detector.onnx', 'onnx'

  def load(self, file: str, config) -> None:
    import onnxruntime
    self._session = onnxruntime.InferenceSession(file, providers=['CPUExecutionProvider'])
    self._names = [o.name for o in self._session.get_outputs()]

  def __call__(self, images: np.ndarray) -> dict:
    return dict(zip(self._names, self._session.run(None, {'images': images})))


FORMATS = {r.FORMAT: r for r in (SavedModelRuntime, TfliteRuntime, OnnxRuntime, JaxRuntime)}
