"""Exported artifacts as Detectors, one class per format of ssd_jax.export.

`Detector.from_exported(folder)` picks the class from the folder's export.json;
each gives the Detector's `detect`, one image at a time, so evaluation
(evaluate.evaluate_detectors), tests and benchmarks treat every format alike.
TensorFlow is imported for saved_model and tflite only; onnxruntime for onnx.
"""
from __future__ import annotations

import os

import numpy as np

from ssd_jax import detector


class SavedModelDetector(detector.ArtifactDetector):
  """`--format=saved_model`: its `serving_default` signature in TensorFlow."""

  FILE, FORMAT = 'saved_model.pb', 'saved_model'

  def load(self, file: str) -> None:
    import tensorflow as tf
    self._serve = tf.saved_model.load(os.path.dirname(file)).signatures['serving_default']

  def run(self, images: np.ndarray) -> dict:
    """The image repeated to the exported batch; the first row's outputs."""
    import tensorflow as tf
    batch = np.repeat(images, self.info['batch'], axis=0)
    return {k: v.numpy()[:1] for k, v in self._serve(images=tf.constant(batch)).items()}


class TfliteDetector(detector.ArtifactDetector):
  """`--format=tflite`: its `serving_default` signature in TFLite's interpreter,
  on every core."""

  FILE, FORMAT = 'detector.tflite', 'tflite'

  def load(self, file: str) -> None:
    import tensorflow as tf
    self._interpreter = tf.lite.Interpreter(model_path=file, num_threads=os.cpu_count())
    self._serve = self._interpreter.get_signature_runner('serving_default')

  def run(self, images: np.ndarray) -> dict:
    return self._serve(images=images)


class OnnxDetector(detector.ArtifactDetector):
  """`--format=onnx`: the graph in ONNX Runtime on CPU (no TensorFlow needed)."""

  FILE, FORMAT = 'detector.onnx', 'onnx'

  def load(self, file: str) -> None:
    import onnxruntime
    self._session = onnxruntime.InferenceSession(file, providers=['CPUExecutionProvider'])
    self._names = [o.name for o in self._session.get_outputs()]

  def run(self, images: np.ndarray) -> dict:
    return dict(zip(self._names, self._session.run(None, {'images': images})))


FORMATS = {'saved_model': SavedModelDetector, 'tflite': TfliteDetector, 'onnx': OnnxDetector}
