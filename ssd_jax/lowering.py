"""The detector as one function, and how it becomes each artifact's graph.

`detection_fn` is the whole detector, traced once in JAX: uint8 RGB images
[B, H, W, 3] of any H, W -> resize -> network -> decode, softmax, per-class
NMS -> the OUTPUTS (ssd_jax/export.py's module doc gives their shapes). It
reaches a jax.export.Exported (`export_jax`, for CPU and CUDA) or TensorFlow
(`tf_signatures`: jax2tf's StableHLO in one XlaCallModule op, serialized at a
version TensorFlow reads, `stablehlo_for_tensorflow`); tflite.py and
onnx_export.py lower the network through the same path. TensorFlow is
imported inside the functions that need it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ssd_jax import builders, detector, postprocess

PLATFORMS = ('cpu', 'cuda')
OUTPUTS = ('boxes', 'scores', 'classes', 'num_detections')


def detection_fn(task, variables) -> Callable[[jax.Array], dict]:
  """The whole detector: u8[B, H, W, 3] RGB -> dict of OUTPUTS (see the module doc).

  Boxes come back in pixels of the input, xyxy: the normalised boxes of
  postprocess scaled by (W, H, W, H). variables: see builders.inference_variables.
  """
  variables = builders.inference_variables(variables)
  model, config, size = task.model, task.config, task.image_size
  anchors = jnp.asarray(task.default_boxes)

  def detect(images):
    h, w = images.shape[1], images.shape[2]
    pixels = detector.resize_images(images, size)
    dets = postprocess.network_detections(variables, pixels, model, anchors, config)
    scale = jnp.array([w, h, w, h], jnp.float32)
    return {'boxes': dets.boxes * scale, 'scores': dets.scores,
            'classes': dets.classes.astype(jnp.int32),
            'num_detections': jnp.sum(dets.valid, axis=-1, dtype=jnp.int32)}

  return detect


def export_jax(fn: Callable, batch: Optional[int] = None) -> jax.export.Exported:
  """fn exported for CPU and CUDA on u8[batch, h, w, 3], h and w symbolic
  (batch too when None)."""
  spec = jax.export.symbolic_shape(f'({batch or "b"}, h, w, 3)')
  return jax.export.export(jax.jit(fn), platforms=PLATFORMS)(
      jax.ShapeDtypeStruct(spec, jnp.uint8))


# --- TensorFlow ----------------------------------------------------------------------

@contextlib.contextmanager
def stablehlo_for_tensorflow():
  """Serializes StableHLO at a version TensorFlow's XlaCallModule can read.

  jax.export targets the StableHLO of about four weeks before its release (1.15.0
  for jax 0.10.2); TensorFlow 2.21's XlaCallModule reads up to 1.13.7 and
  rejects the newer encoding of top_k. The twelve-week compatibility target
  (1.13.7 here) is read by both. jax.export takes no argument for it, so its
  private serializer is swapped for the duration of the conversion.
  """
  from jax._src import xla_bridge
  from jax._src.export import _export
  from jax._src.lib import _jax
  from jax._src.lib.mlir.dialects import hlo

  def to_bytecode(module):
    version = hlo.get_version_from_compatibility_requirement(
        hlo.StablehloCompatibilityRequirement.WEEK_12)
    return _jax.mlir.serialize_portable_artifact(
        module, version, xla_bridge.get_backend().serialize_with_sdy)

  original = _export._module_to_bytecode
  _export._module_to_bytecode = to_bytecode
  try:
    yield
  finally:
    _export._module_to_bytecode = original


def tf_signatures(fn: Callable, batch: int, class_names) -> dict:
  """Concrete TF functions: `serving_default` (fn via jax2tf; images
  u8[batch, H, W, 3] -> dict of OUTPUTS) and `class_names` (() -> str[C-1]).

  The batch is fixed: TensorFlow cannot refine a symbolic batch through the
  post-processing's top_k; H and W stay symbolic (the resize's output is static).
  """
  import tensorflow as tf
  from jax.experimental import jax2tf

  with stablehlo_for_tensorflow():
    converted = jax2tf.convert(fn, polymorphic_shapes=[f'({batch}, h, w, 3)'],
                               with_gradient=False, native_serialization_platforms=PLATFORMS)
    detect = tf.function(converted, autograph=False).get_concrete_function(
        tf.TensorSpec([batch, None, None, 3], tf.uint8, name='images'))
  return {'serving_default': detect, 'class_names': class_names_signature(class_names)}


def class_names_signature(class_names):
  """The concrete TF function `class_names`: () -> {'class_names': str[C-1]}."""
  import tensorflow as tf
  return tf.function(lambda: {'class_names': tf.constant(list(class_names), tf.string)},
                     input_signature=[], autograph=False).get_concrete_function()


def save_saved_model(signatures: dict, folder: str) -> None:
  """The signatures alone (the StableHLO, with its parameters, is stored once)."""
  import tensorflow as tf
  tf.saved_model.save(tf.Module(), folder, signatures=signatures)
