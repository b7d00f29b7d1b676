"""TFLite artifacts: the network from JAX, ending in TFLite's detection post-process.

A .tflite detector is two graphs joined into one subgraph:

  network      images -> box_deltas f32[1, A, 4] (tx, ty, tw, th, the model's
               offsets) and logits f32[1, A, C] (class 0 background): jax2tf's
               StableHLO, lowered to TFLite builtins by the converter (and, for
               full_int8, quantised with a representative dataset).
  post-process in float: the softmax and the offsets as the op reads them,
               (ty, tx, th, tw) with the log sizes capped; then TFLite's own
               TFLite_Detection_PostProcess op (decode against the default
               boxes stored in it as (yc, xc, h, w), regular per-class NMS, the
               best D = eval.max_detections), then a few builtin ops that give
               the artifact's outputs (pixels xyxy, 1-based classes).

The network ends at the heads, so a full_int8 model computes in int8 only what
XNNPACK runs in int8: the softmax, the reordering and the cap stay float (int8
they ran in TFLite's own kernels, and the softmax lost resolution near 1).

The converter lowers a `tf.function(experimental_implements=...)` to that op
only in graphs without jax2tf's XlaCallModule (it inlines every function of a
graph that holds one), so each graph is converted on its own and `join` splices
the post-process into the network's flatbuffer.

Before the op, each class keeps its eval.top_k best scores (the others set to
0; ties to the lower box index), as postprocess.py does. Where the op's rules
still differ (see docs/export.md):
  - it decodes without clipping, so NMS compares unclipped boxes where ssd_jax
    (eval.clip_boxes) clips first; the outputs are clipped afterwards here;
  - it keeps scores >= the threshold (ssd_jax: >);
  - it reads one image per call (batch 1: its kernel,
    tensorflow/lite/kernels/detection_postprocess.cc, fixes kBatchSize = 1).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import tempfile
from typing import Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import artifacts, box_utils, builders, detector, layers, lowering, postprocess

POSTPROCESS_OP = 'TFLite_Detection_PostProcess'
QUANTIZE = ('none', 'int8', 'full_int8')
NETWORK_OUTPUTS = ('box_deltas', 'logits')  # join() matches them by name
REPRESENTATIVE_IMAGES = 200
THREAD_SAFE_COLUMNS = artifacts.TFLITE_MAX_THREADS  # see op_columns


def with_op_rules(config):
  """A copy of the config whose post-processing follows the op's rules
  (unclipped boxes in NMS): a Detector made with it gives the float TFLite
  artifact's detections (tests/test_export.py), whose boxes are then clipped
  to the image when the original config clips them."""
  config = copy.deepcopy(config)
  config.eval.clip_boxes = False
  return config


# --- the network ---------------------------------------------------------------------

def network_fn(task, variables, resize: bool) -> Callable[[jax.Array], dict]:
  """images [1, H, W, 3] -> dict of NETWORK_OUTPUTS (see the module doc).

  resize: images are uint8 of any size, resized here as Detector.preprocess
  does; otherwise they are f32 pixels at the network's size.
  """
  variables = builders.inference_variables(variables)
  model, config, size = task.model, task.config, task.image_size

  def net(images):
    pixels = detector.resize_images(images, size) if resize else images
    loc, logits = model.apply(variables, builders.normalise_images(pixels, config))
    return dict(zip(NETWORK_OUTPUTS, (loc.astype(jnp.float32), logits.astype(jnp.float32))))

  return net


def anchors_yxhw(task) -> np.ndarray:
  """The default boxes as the op reads them: f32[A, 4] normalised (yc, xc, h, w)."""
  return np.asarray(task.default_boxes, np.float32)[:, [1, 0, 3, 2]]


def op_columns(num_foreground: int) -> list[int]:
  """The op's foreground columns: model classes 1..C-1, with -1 (a column of
  zeros) at columns 2..THREAD_SAFE_COLUMNS.

  With N >= 2 threads, TF 2.21's regular-NMS kernel never processes column N
  (its shared column counter starts at N and is pre-incremented: a class
  silently gone). Zero columns there leave every thread count up to
  THREAD_SAFE_COLUMNS exact; with two classes or fewer nothing is skipped.
  """
  classes = list(range(1, num_foreground + 1))
  if num_foreground <= 2:
    return classes
  return classes[:2] + [-1] * (THREAD_SAFE_COLUMNS - 1) + classes[2:]


def postprocess_attributes(config, num_foreground: int) -> dict:
  """The op's attributes from the config's eval settings and box coding. The op
  keeps scores >= its threshold and ssd_jax scores > eval.score_threshold: its
  threshold is the next float32 above ssd_jax's."""
  e, (v_centre, v_size) = config.eval, config.anchors.variances
  above = float(np.nextafter(np.float32(e.score_threshold), np.float32(np.inf)))
  return {'max_detections': int(e.max_detections), 'max_classes_per_detection': 1,
          'detections_per_class': int(e.max_detections), 'use_regular_nms': True,
          'nms_score_threshold': above, 'nms_iou_threshold': float(e.nms_iou),
          'y_scale': 1 / v_centre, 'x_scale': 1 / v_centre, 'h_scale': 1 / v_size,
          'w_scale': 1 / v_size, 'num_classes': int(num_foreground)}


def _implements(attributes: dict) -> str:
  """The `experimental_implements` text (an AttrValue map) naming the op."""
  def value(v):
    if isinstance(v, bool):
      return f'b: {str(v).lower()}'
    return f'i: {v}' if isinstance(v, int) else f'f: {v!r}'
  attrs = ' '.join(f'attr {{ key: "{k}" value {{ {value(v)} }} }}' for k, v in attributes.items())
  return f'name: "{POSTPROCESS_OP}" {attrs}'


# --- the two graphs ------------------------------------------------------

def lower_network(fn: Callable, shape: list, dtype: str, quantize: str = 'none',
                  representative: Optional[Callable[[], Iterable]] = None) -> bytes:
  """A JAX network on `images` -> a TFLite flatbuffer of builtins (signature
  `serving_default`, input `images`): jax2tf's StableHLO with depthwise
  convolutions kept grouped (layers.grouped_depthwise), saved as a SavedModel
  and converted (convert_network). shape: [1, S, S, 3], or [1, None, None, 3]
  for any height and width; dtype: the input's ('uint8', 'float32')."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  polymorphic = ['(1, h, w, 3)'] if None in shape else None
  int8 = quantize == 'full_int8'
  with lowering.stablehlo_for_tensorflow(), layers.grouped_depthwise(), \
       (layers.unfused_hard_swish() if int8 else contextlib.nullcontext()):
    converted = jax2tf.convert(fn, polymorphic_shapes=polymorphic, with_gradient=False,
                               native_serialization_platforms=lowering.PLATFORMS)
    concrete = tf.function(converted, autograph=False).get_concrete_function(
        tf.TensorSpec(shape, dtype, name='images'))
  with tempfile.TemporaryDirectory() as tmp:
    tf.saved_model.save(tf.Module(), tmp, signatures={'serving_default': concrete})
    return convert_network(tmp, quantize, representative)


def op_inputs(box_deltas, logits, config) -> tuple:
  """The network's outputs as the op reads them (TF ops): (box encodings
  f32[1, A, 4] (ty, tx, th, tw), the log sizes capped as box_utils.decode caps
  them, which the op does not; class predictions f32[1, A, C], the softmax)."""
  import tensorflow as tf
  cap = box_utils.MAX_LOG_SCALE / config.anchors.variances[1]
  yxhw = tf.gather(box_deltas, [1, 0, 3, 2], axis=-1)
  encodings = tf.concat([yxhw[..., :2], tf.minimum(yxhw[..., 2:], cap)], axis=-1)
  return encodings, tf.nn.softmax(logits, axis=-1)


def best_of_each_class(class_predictions, top_k: int):
  """f32[1, A, C] -> the same with all but each foreground class's top_k best
  scores set to 0 (TF ops): exactly top_k, ties going to the lower box index as
  jax.lax.top_k breaks them, so that the op's NMS sees the candidates
  postprocess.py's does. (Keeping every box tied with the top_k-th instead let
  full-int8 models, whose probabilities take a few hundred values, send 15 times
  as many boxes per class to NMS, which then took most of the detector's time.)"""
  import tensorflow as tf
  by_class = tf.transpose(class_predictions[0, :, 1:])  # [C-1, A]
  best, index = tf.math.top_k(by_class, top_k, sorted=True)  # [C-1, K] each
  rows = tf.broadcast_to(tf.range(tf.shape(by_class)[0])[:, None], tf.shape(index))
  kept = tf.scatter_nd(tf.stack([rows, index], axis=-1), best, tf.shape(by_class))
  return tf.concat([class_predictions[..., :1], tf.transpose(kept)[None]], axis=-1)


def save_postprocess(task, folder: str, fixed_size: bool) -> dict:
  """The post-process as a SavedModel: `serving_default` (images, box_deltas,
  logits) -> the artifact's outputs (see export's
  module doc; `images`, uint8 as the joined model's input, only gives the
  pixel scale) and `class_names` (() -> str[C-1]). Returns the op's attributes."""
  import tensorflow as tf

  config, size = task.config, task.image_size
  anchors = anchors_yxhw(task)
  num, fg = anchors.shape[0], task.num_classes - 1
  columns = op_columns(fg)
  top_k, _ = postprocess.limits(config.eval.top_k, config.eval.max_detections, num,
                                task.num_classes)
  attributes = postprocess_attributes(config, len(columns))
  d = attributes['max_detections']

  @tf.function(experimental_implements=_implements(attributes), autograph=False)
  def detection_postprocess(box_encodings, class_predictions, default_boxes):
    del box_encodings, class_predictions, default_boxes  # the op replaces this body
    return tf.zeros([1, d, 4]), tf.zeros([1, d]), tf.zeros([1, d]), tf.zeros([1])

  side = size if fixed_size else None
  specs = [tf.TensorSpec([1, side, side, 3], tf.uint8, name='images'),
           tf.TensorSpec([1, num, 4], tf.float32, name=NETWORK_OUTPUTS[0]),
           tf.TensorSpec([1, num, fg + 1], tf.float32, name=NETWORK_OUTPUTS[1])]

  class PostProcess(tf.Module):
    @tf.function(input_signature=specs, autograph=False)
    def __call__(self, images, box_deltas, logits):
      box_encodings, class_predictions = op_inputs(box_deltas, logits, config)
      padded = tf.concat([best_of_each_class(class_predictions, top_k),
                          tf.zeros([1, num, 1])], axis=-1)
      columns_in = tf.gather(padded, [0] + [c if c >= 0 else fg + 1 for c in columns], axis=-1)
      boxes, classes, scores, count = detection_postprocess(
          box_encodings, columns_in, tf.constant(anchors))
      classes = tf.gather(tf.constant([max(c, 0) for c in columns], tf.int32),
                          tf.cast(classes, tf.int32))
      count = tf.cast(count, tf.int32)
      valid = tf.range(d)[None] < count[:, None]
      yxyx = boxes
      if config.eval.clip_boxes:
        yxyx = tf.clip_by_value(yxyx, 0.0, 1.0)
      hw = tf.cast(tf.shape(images)[1:3], tf.float32)
      scale = tf.stack([hw[1], hw[0], hw[1], hw[0]])
      xyxy = tf.gather(yxyx, [1, 0, 3, 2], axis=-1) * scale
      return {'boxes': tf.where(valid[..., None], xyxy, 0.0),
              'scores': tf.where(valid, scores, 0.0),
              'classes': tf.where(valid, classes, 0),
              'num_detections': count}

  module = PostProcess()
  tf.saved_model.save(module, folder, signatures={
      'serving_default': module.__call__,
      'class_names': lowering.class_names_signature(task.class_names)})
  return attributes


# --- conversion and the join ---------------------------------------------------------------

def convert_network(folder: str, quantize: str,
                    representative: Optional[Callable[[], Iterable]] = None) -> bytes:
  """The network's SavedModel -> TFLite builtins; quantize: 'none', 'int8'
  (dynamic range: int8 weights) or 'full_int8' (every op int8 from the
  representative images, f32 [1, S, S, 3] each; uint8 input, float outputs)."""
  import tensorflow as tf
  converter = tf.lite.TFLiteConverter.from_saved_model(folder)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == 'full_int8':
    converter.representative_dataset = lambda: ({'images': x} for x in representative())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
  return converter.convert()


def convert_postprocess(folder: str, attributes: dict) -> bytes:
  """The post-process's SavedModel -> TFLite, the op's options set to
  `attributes` (the converter drops detections_per_class, leaving the op's
  default of 100 per class)."""
  import tensorflow as tf
  from flatbuffers import flexbuffers
  from tensorflow.lite.tools import flatbuffer_utils as fu
  converter = tf.lite.TFLiteConverter.from_saved_model(
      folder, signature_keys=['serving_default', 'class_names'])
  converter.allow_custom_ops = True
  model = fu.read_model_from_bytearray(converter.convert())
  codes = [i for i, c in enumerate(model.operatorCodes)
           if (c.customCode or b'').decode() == POSTPROCESS_OP]
  ops = [op for g in model.subgraphs for op in g.operators if op.opcodeIndex in codes]
  if len(ops) != 1:
    raise RuntimeError(f'the TFLite converter did not emit one {POSTPROCESS_OP} op '
                       f'(found {len(ops)}); this TensorFlow version is not supported.')
  ops[0].customOptions = list(flexbuffers.Dumps(attributes))
  return bytes(fu.convert_object_to_bytearray(model))


def _same_code(a, b) -> bool:
  return (a.builtinCode, a.deprecatedBuiltinCode, a.customCode, a.version) == (
      b.builtinCode, b.deprecatedBuiltinCode, b.customCode, b.version)


def _adopt(model, other) -> Callable:
  """Appends `other`'s buffers and missing operator codes to `model`; returns
  a function that moves one of `other`'s tensors or operators over (in place)."""
  buffers = {0: 0}  # buffer 0 is the shared empty one
  for i, buffer in enumerate(other.buffers[1:], start=1):
    buffers[i] = len(model.buffers)
    model.buffers.append(buffer)
  codes = {}
  for i, code in enumerate(other.operatorCodes):
    same = [j for j, c in enumerate(model.operatorCodes) if _same_code(c, code)]
    codes[i] = same[0] if same else len(model.operatorCodes)
    if not same:
      model.operatorCodes.append(code)

  def move(item):
    if hasattr(item, 'opcodeIndex'):
      item.opcodeIndex = codes[item.opcodeIndex]
    else:
      item.buffer = buffers[item.buffer]
    return item

  return move


def join(network: bytes, post: bytes, key: str = 'serving_default') -> bytes:
  """One flatbuffer: `post`'s signature `key` spliced after `network`'s, and
  `post`'s other signatures added whole.

  Each input of `post`'s `key` is the tensor of the same name in `network`'s
  signature (an output, or its input `images`); the joined signature keeps
  the network's inputs and takes `post`'s outputs.
  """
  from tensorflow.lite.tools import flatbuffer_utils as fu
  net, tail = fu.read_model_from_bytearray(network), fu.read_model_from_bytearray(post)
  move = _adopt(net, tail)
  sig = next(s for s in net.signatureDefs if s.signatureKey.decode() == key)
  graph = net.subgraphs[sig.subgraphIndex]
  for tail_sig in tail.signatureDefs:
    extra = tail.subgraphs[tail_sig.subgraphIndex]
    if tail_sig.signatureKey.decode() != key:
      for item in list(extra.tensors) + list(extra.operators):
        move(item)
      tail_sig.subgraphIndex = len(net.subgraphs)
      net.subgraphs.append(extra)
      net.signatureDefs.append(tail_sig)
      continue
    named = {t.name.decode(): t.tensorIndex for t in list(sig.inputs) + list(sig.outputs)}
    tensors = {t.tensorIndex: named[t.name.decode()] for t in tail_sig.inputs}
    for i, tensor in enumerate(extra.tensors):
      if i not in tensors:
        tensors[i] = len(graph.tensors)
        graph.tensors.append(move(tensor))
    for op in extra.operators:
      op.inputs = [tensors[i] if i >= 0 else i for i in op.inputs]
      op.outputs = [tensors[i] for i in op.outputs]
      graph.operators.append(move(op))
    graph.outputs = [tensors[i] for i in extra.outputs]
    for out in tail_sig.outputs:
      out.tensorIndex = tensors[out.tensorIndex]
    sig.outputs = tail_sig.outputs
  return bytes(fu.convert_object_to_bytearray(net))


def to_tflite(task, variables, quantize: str = 'none',
              representative: Optional[Callable[[], Iterable]] = None) -> tuple[bytes, bytes]:
  """(the detector, its network alone) as TFLite flatbuffers (see the module
  doc); full_int8 takes the network's input, u8[1, S, S, 3], and needs
  `representative` (see representative_images)."""
  fixed, size = quantize == 'full_int8', task.image_size
  shape, dtype = ([1, size, size, 3], 'float32') if fixed else ([1, None, None, 3], 'uint8')
  network = lower_network(network_fn(task, variables, resize=not fixed), shape, dtype,
                          quantize, representative)
  with tempfile.TemporaryDirectory() as tmp:
    attributes = save_postprocess(task, tmp, fixed)
    return join(network, convert_postprocess(tmp, attributes)), network


def representative_images(task, folder: Optional[str] = None,
                          count: int = REPRESENTATIVE_IMAGES) -> Callable[[], Iterator]:
  """A generator function of f32[1, S, S, 3] pixels (whole values 0..255, as a
  uint8 input holds) of `count` images evenly spaced over the config's
  training splits, or over the images in `folder`; resized as
  Detector.preprocess resizes. The images are read now (held as uint8): an
  unreadable one is skipped with a warning naming it, and ValueError or
  FileNotFoundError, naming the flag to fix, is raised when none can be read."""
  if count < 1:
    raise ValueError(f'--representative_images={count}: give a count >= 1.')
  size = task.image_size
  if folder is not None:
    pixels = _folder_pixels(folder, count, size)
  else:
    from ssd_jax.data import input_pipeline
    source = input_pipeline.opened(
        input_pipeline.train_source, task.config, 'full_int8 calibrates on the training data '
        'unless given --representative=FOLDER of images like the ones to detect on')
    examples = input_pipeline.decoded_examples(source, _spaced(len(source), count))
    pixels = [detector.resize_to_uint8(ex['image'][None], size)
              for ex in examples.as_numpy_iterator() if ex['ok']]
  if not pixels:
    raise ValueError('no readable image to calibrate full_int8 quantisation with; give '
                     '--representative=FOLDER of images like the ones to detect on.')
  return lambda: (p.astype(np.float32) for p in pixels)


def _folder_pixels(folder: str, count: int, size: int) -> list[np.ndarray]:
  """u8[1, S, S, 3] of `count` images evenly spaced over those in `folder`,
  skipping (and naming) the unreadable ones."""
  from absl import logging

  from ssd_jax import images, workflows
  paths = workflows.find_images(folder, '--representative')
  pixels = []
  for path in (paths[i] for i in _spaced(len(paths), count)):
    try:
      pixels.append(detector.resize_to_uint8(images.read_image(path)[None], size))
    except ValueError as e:
      logging.warning('--representative: %s Calibrating without it.', e)
  return pixels


def _spaced(total: int, count: int) -> list[int]:
  """min(count, total) indices evenly spaced over range(total)."""
  if total < 1:
    raise ValueError('no image to calibrate full_int8 quantisation with; give '
                     '--representative=FOLDER of images like the ones to detect on.')
  return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


# --- what the flatbuffer holds ------------------------------------------------------------

def _op_details(flatbuffer: bytes) -> tuple[list, dict]:
  """(the operations, {tensor index: dtype}) of the flatbuffer's first subgraph,
  as written (no delegate folds them)."""
  import tensorflow as tf
  interpreter = artifacts.tflite_interpreter(
      model_content=flatbuffer,
      experimental_op_resolver_type=tf.lite.experimental.OpResolverType
      .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
  interpreter.allocate_tensors()
  tensors = {t['index']: t['dtype'] for t in interpreter.get_tensor_details()}
  return interpreter._get_ops_details(), tensors  # pylint: disable=protected-access


def float_ops(flatbuffer: bytes) -> dict:
  """{op name: count} of the operations that compute in float (a float32 input
  or output), leaving out QUANTIZE / DEQUANTIZE and the post-process."""
  details, tensors = _op_details(flatbuffer)
  found = collections.Counter(
      op['op_name'] for op in details
      if op['op_name'] not in ('QUANTIZE', 'DEQUANTIZE', POSTPROCESS_OP)
      and any(tensors.get(i) == np.float32 for i in [*op['inputs'], *op['outputs']] if i >= 0))
  return dict(sorted(found.items()))


def ops(flatbuffer: bytes) -> dict:
  """{op name: count} of the operations in the flatbuffer's first subgraph."""
  return dict(sorted(collections.Counter(op['op_name']
                                         for op in _op_details(flatbuffer)[0]).items()))
