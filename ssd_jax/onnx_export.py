"""ONNX artifacts: the resize, the network and the post-processing in one graph.

  images u8[B, H, W, 3] --Resize--> f32[B, S, S, 3] --network--> loc, probs
    --decode, clip--> boxes [B, A, 4] --top_k per class--> NonMaxSuppression
    --the best D per image--> boxes, scores, classes, num_detections (export's
    OUTPUTS; B, H and W dynamic)

The network goes JAX -> jax2tf (StableHLO) -> the TFLite converter's lowering
to builtins, at batch 1 -> tf2onnx's TFLite reader -> a symbolic batch
(dynamic_batch): the only route from a jax2tf model to
ONNX that needs no further dependency (tf2onnx cannot read the XlaCallModule of
a SavedModel; jax2onnx brings equinox, netron and the Hugging Face hub, and
pins orbax). The resize (ONNX Resize: bilinear, half-pixel centres, as
Detector.preprocess) and the post-processing are written here in ONNX's own
operators, NonMaxSuppression included, to ssd_jax's rules (postprocess.py):
decode as box_utils.decode, clip when eval.clip_boxes, keep the eval.top_k
best of each class (ties to the lower box index), greedy NMS per class
(IoU > eval.nms_iou suppresses), then the best eval.max_detections.
"""
from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import box_utils, builders, lowering, postprocess

OPSET = 17


def network_fn(task, variables):
  """f32[B, S, S, 3] pixels -> (loc f32[B, A, 4], probs f32[B, C, A] softmax;
  transposed, so that the two outputs differ in shape whatever C is)."""
  variables = builders.inference_variables(variables)
  model, config = task.model, task.config

  def net(pixels):
    loc, logits = model.apply(variables, builders.normalise_images(pixels, config))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return loc.astype(jnp.float32), jnp.swapaxes(probs, 1, 2)

  return net


def network_onnx(task, variables):
  """The network as an onnx.ModelProto with a dynamic batch (see the module doc)."""
  import tf2onnx

  from ssd_jax import tflite
  size = task.image_size
  flatbuffer = tflite.lower_network(network_fn(task, variables), [1, size, size, 3], 'float32')
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'network.tflite')
    with open(path, 'wb') as f:
      f.write(flatbuffer)
    model, _ = tf2onnx.convert.from_tflite(path, opset=OPSET)
  return dynamic_batch(model)


def dynamic_batch(model):
  """A network converted at batch 1 made batch-free, in place: every Reshape of
  a computed tensor to a constant shape starting with 1 copies its input's
  batch instead (ONNX Reshape's 0), and the inputs and outputs get a symbolic
  batch. (Converted with a symbolic batch, the TFLite lowering broadcasts
  every constant at run time: 4x the operations and 4x the time in ONNX
  Runtime for SSDLite320.)"""
  from onnx import numpy_helper
  graph = model.graph
  constants = {i.name: i for i in graph.initializer}
  for node in graph.node:
    if node.op_type == 'Reshape' and node.input[1] in constants and (
        node.input[0] not in constants):
      shape = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64)
      if shape.size and shape[0] == 1:
        shape[0] = 0
        constants[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
  del graph.value_info[:]
  for value in list(graph.input) + list(graph.output):
    value.type.tensor_type.shape.dim[0].dim_param = 'batch'
  return model


class _Graph:
  """Nodes and constants appended to an ONNX graph under a name prefix."""

  def __init__(self, graph, prefix: str = 'ssd_'):
    self.graph, self.prefix, self.count = graph, prefix, 0

  def name(self, hint: str) -> str:
    self.count += 1
    return f'{self.prefix}{hint}_{self.count}'

  def const(self, value, dtype=np.float32) -> str:
    from onnx import numpy_helper
    name = self.name('const')
    self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def op(self, op_type: str, *inputs, outputs=None, **attrs):
    """Appends one node; returns its output's name (a list when it has several)."""
    from onnx import helper
    outputs = outputs or [self.name(op_type.lower())]
    self.graph.node.append(helper.make_node(op_type, list(inputs), outputs,
                                            name=self.name(op_type), **attrs))
    return outputs[0] if len(outputs) == 1 else outputs

  def slice(self, x: str, start: int, end: int, axis: int) -> str:
    return self.op('Slice', x, self.const([start], np.int64), self.const([end], np.int64),
                   self.const([axis], np.int64))


def _resize(g: _Graph, images: str, size: int, output: str) -> None:
  """u8[B, H, W, 3] -> f32[B, S, S, 3] into `output`: bilinear, half-pixel centres."""
  batch = g.slice(g.op('Shape', images), 0, 1, 0)
  sizes = g.op('Concat', batch, g.const([size, size, 3], np.int64), axis=0)
  g.op('Resize', g.op('Cast', images, to=1), '', '', sizes, outputs=[output],
       mode='linear', coordinate_transformation_mode='half_pixel')


def _decode(g: _Graph, loc: str, anchors: np.ndarray, variances, clip: bool) -> str:
  """loc f32[B, A, 4] + cxcywh anchors -> f32[B, A, 4] xyxy (box_utils.decode)."""
  centre = g.op('Add', g.const(anchors[:, :2]), g.op(
      'Mul', g.slice(loc, 0, 2, 2), g.const(anchors[:, 2:] * variances[0])))
  log_size = g.op('Min', g.op('Mul', g.slice(loc, 2, 4, 2), g.const(variances[1])),
                  g.const(box_utils.MAX_LOG_SCALE))
  half = g.op('Mul', g.op('Exp', log_size), g.const(anchors[:, 2:] / 2))
  boxes = g.op('Concat', g.op('Sub', centre, half), g.op('Add', centre, half), axis=2)
  if clip:
    boxes = g.op('Clip', boxes, g.const(0.0), g.const(1.0))
  return boxes


def _candidates(g: _Graph, probs: str, top_k: int) -> str:
  """probs f32[B, C, A] -> foreground scores f32[B, C-1, A], all but each
  class's top_k best set to 0 (out of NMS); ties go to the lower box index
  (ONNX's TopK rule, and jax.lax.top_k's)."""
  scores = g.slice(probs, 1, 1 << 30, 1)
  values, index = g.op('TopK', scores, g.const([top_k], np.int64), axis=2,
                       outputs=[g.name('topk_values'), g.name('topk_index')])
  zeros = g.op('ConstantOfShape', g.op('Shape', scores), value=_tensor(0.0))
  return g.op('ScatterElements', zeros, index, values, axis=2)


def _best(g: _Graph, boxes: str, scores: str, num_anchors: int, config, detections: int,
          images: str) -> None:
  """NMS per class, then the best `detections` of each image -> the OUTPUTS."""
  e = config.eval
  selected = g.op('NonMaxSuppression', boxes, scores,
                  g.const([detections], np.int64), g.const([e.nms_iou]),
                  g.const([e.score_threshold]))
  kept = g.op('GatherND', scores, selected)  # [K]
  image = g.slice(selected, 0, 1, 1)
  flat = g.op('Add', g.op('Mul', g.slice(selected, 1, 2, 1), g.const([num_anchors], np.int64)),
              g.slice(selected, 2, 3, 1))
  shape = g.op('Shape', scores)
  dense = g.op('ConstantOfShape', g.op('Concat', g.slice(shape, 0, 1, 0), g.op(
      'Mul', g.slice(shape, 1, 2, 0), g.slice(shape, 2, 3, 0)), axis=0),
      value=_tensor(0.0))
  dense = g.op('ScatterND', dense, g.op('Concat', image, flat, axis=1), kept)
  top, index = g.op('TopK', dense, g.const([detections], np.int64), axis=1,
                    outputs=[g.name('best_values'), g.name('best_index')])
  valid = g.op('Greater', top, g.const(0.0))
  anchor = g.op('Mod', index, g.const(num_anchors, np.int64))
  classes = g.op('Add', g.op('Div', index, g.const(num_anchors, np.int64)),
                 g.const(1, np.int64))
  gathered = g.op('GatherElements', boxes, g.op('Expand', g.op(
      'Unsqueeze', anchor, g.const([2], np.int64)), g.const([1, 1, 4], np.int64)), axis=1)
  hw = g.op('Cast', g.slice(g.op('Shape', images), 1, 3, 0), to=1)
  w, h = g.slice(hw, 1, 2, 0), g.slice(hw, 0, 1, 0)
  scale = g.op('Concat', w, h, w, h, axis=0)
  valid3 = g.op('Unsqueeze', valid, g.const([2], np.int64))
  g.op('Where', valid3, g.op('Mul', gathered, scale), g.const(0.0), outputs=['boxes'])
  g.op('Where', valid, top, g.const(0.0), outputs=['scores'])
  g.op('Cast', g.op('Where', valid, classes, g.const(0, np.int64)), to=6, outputs=['classes'])
  g.op('ReduceSum', g.op('Cast', valid, to=6), g.const([1], np.int64), keepdims=0,
       outputs=['num_detections'])


def _tensor(value: float):
  from onnx import numpy_helper
  return numpy_helper.from_array(np.asarray([value], np.float32))


def to_onnx(task, variables) -> bytes:
  """The detector as a serialized ONNX model (see the module doc)."""
  import onnx
  from onnx import TensorProto, helper

  model = network_onnx(task, variables)
  graph = model.graph
  (net_input,) = [i.name for i in graph.input]
  config, anchors = task.config, np.asarray(task.default_boxes, np.float32)
  loc, probs = sorted((o.name for o in graph.output), key=lambda name: _dim(graph, name, -1) != 4
                      or _dim(graph, name, 1) != anchors.shape[0])
  g = _Graph(graph)
  num_anchors = anchors.shape[0]
  top_k, detections = postprocess.limits(config.eval.top_k, config.eval.max_detections,
                                         num_anchors, task.num_classes)
  del graph.input[:]
  graph.input.append(helper.make_tensor_value_info('images', TensorProto.UINT8,
                                                   ['batch', 'height', 'width', 3]))
  _resize(g, 'images', task.image_size, net_input)
  boxes = _decode(g, loc, anchors, tuple(config.anchors.variances), config.eval.clip_boxes)
  scores = _candidates(g, probs, top_k)
  _best(g, boxes, scores, num_anchors, config, detections, 'images')
  del graph.output[:]
  types = {'boxes': TensorProto.FLOAT, 'scores': TensorProto.FLOAT,
           'classes': TensorProto.INT32, 'num_detections': TensorProto.INT32}
  shapes = {'boxes': ['batch', detections, 4], 'scores': ['batch', detections],
            'classes': ['batch', detections], 'num_detections': ['batch']}
  for name in lowering.OUTPUTS:
    graph.output.append(helper.make_tensor_value_info(name, types[name], shapes[name]))
  _sort_nodes(graph)
  onnx.checker.check_model(model)
  return model.SerializeToString()


def _dim(graph, name: str, axis: int) -> int:
  """A static dimension of a graph output (0 when dynamic)."""
  (out,) = [o for o in graph.output if o.name == name]
  return out.type.tensor_type.shape.dim[axis].dim_value


def _sort_nodes(graph) -> None:
  """Puts the nodes in topological order (the resize feeds the network)."""
  ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {''}
  pending, ordered = list(graph.node), []
  while pending:
    left = []
    for node in pending:
      if all(i in ready for i in node.input):
        ordered.append(node)
        ready.update(node.output)
      else:
        left.append(node)
    if len(left) == len(pending):
      raise RuntimeError(f'ONNX graph has a cycle or a missing input at {left[0].name}')
    pending = left
  del graph.node[:]
  graph.node.extend(ordered)
