"""A trained detector -> one self-contained artifact for serving or devices.

  python -m ssd_jax.export --workdir=/tmp/voc300 --format=saved_model --output=/tmp/voc300_export/saved_model
  python -m ssd_jax.export --workdir=/tmp/voc300 --format=tflite --quantize=int8 --output=/tmp/voc300_export/tflite_int8
  python -m ssd_jax.export --workdir=/tmp/voc300 --format=jax --output=/tmp/voc300_export/jax

The whole detector is one function, traced once in JAX: uint8 RGB images
[B, H, W, 3] of any H, W -> bilinear resize to the network input (as
Detector.preprocess: half-pixel centres, no antialiasing) -> the network ->
decode, softmax, per-class NMS, the best D = eval.max_detections per image.
It returns, best first, valid detections first:

  boxes           f32[B, D, 4]  pixels of the input images, xyxy
  scores          f32[B, D]     class probabilities (0 past num_detections)
  classes         i32[B, D]     model classes 1..C-1 (0 past num_detections);
                                the name of class c is class_names[c - 1]
  num_detections  i32[B]        how many leading entries are detections

The parameters are constants inside the artifact (about their float32 size);
nothing else is read. --dtype=bfloat16 computes in bfloat16 (saved_model, jax).
Each new image size compiles once in XLA (jax, saved_model).

Formats (each --output folder also gets config.json and export.json, whose
`class_names` name the classes):
  saved_model  a TensorFlow SavedModel (jax2tf, native serialization: the
               StableHLO runs in one XlaCallModule op, on CPU or CUDA). Signature
               `serving_default`: images u8[--batch, H, W, 3] -> the four outputs;
               signature `class_names`: () -> class_names str[C-1].
  tflite       detector.tflite, converted from that SavedModel by the TFLite
               converter, which lowers the StableHLO to builtin ops only (no Flex,
               no custom ops); H, W stay dynamic (the interpreter resizes its
               input). Signatures as the SavedModel's. --quantize=int8:
               dynamic-range quantisation (int8 weights, float activations),
               about a quarter of the size.
  jax          detector.jax, a serialized jax.export.Exported of the same function
               with symbolic batch, height and width, for CPU and CUDA.
               Detector.from_exported(output) runs it without TensorFlow.

TensorFlow is imported only for saved_model and tflite.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from absl import app, flags

from ssd_jax import builders, checkpoints, detector, postprocess, workdirs
from ssd_jax.task import Task

FORMATS = ('saved_model', 'tflite', 'jax')
DTYPES = ('float32', 'bfloat16')
QUANTIZE = ('none', 'int8')
PLATFORMS = ('cpu', 'cuda')
OUTPUTS = ('boxes', 'scores', 'classes', 'num_detections')
JAX_FILE = detector.EXPORTED_FILE
TFLITE_FILE = 'detector.tflite'
INFO_FILE = detector.EXPORT_INFO_FILE


# --- the detector as one function ------------------------------------------------

def load(workdir: str, dtype: str = 'float32') -> tuple:
  """(task, inference variables as NumPy, step) of the latest checkpoint in a workdir.

  dtype: the compute dtype (model.dtype) to export with; parameters keep theirs.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'--workdir={workdir} does not exist; give the workdir of a '
                            f'training run (or an ssd_jax.convert output with config.json).')
  try:
    config = workdirs.find_config(workdir)
  except FileNotFoundError:
    raise FileNotFoundError(f'--workdir={workdir} has no {workdirs.CONFIG_FILE}; give the '
                            f'workdir of a training run (it holds config.json and '
                            f'checkpoints/).') from None
  config.model.dtype = dtype
  task = Task.of(config)
  variables, step = checkpoints.restore_variables(task, workdir)
  return task, jax.device_get(variables), step


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


# --- TensorFlow: SavedModel and TFLite ----------------------------------------------

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
  names = tf.function(lambda: {'class_names': tf.constant(list(class_names), tf.string)},
                      input_signature=[]).get_concrete_function()
  return {'serving_default': detect, 'class_names': names}


def save_saved_model(signatures: dict, folder: str) -> None:
  """The signatures alone (the StableHLO, with its parameters, is stored once)."""
  import tensorflow as tf
  tf.saved_model.save(tf.Module(), folder, signatures=signatures)


def to_tflite(saved_model: str, quantize: str = 'none') -> bytes:
  """A SavedModel of tf_signatures -> a TFLite flatbuffer, builtin ops only.

  The converter legalises the XlaCallModule's StableHLO to TFLite builtins
  itself; quantize='int8' adds dynamic-range quantisation (Optimize.DEFAULT
  without a representative dataset).
  """
  import tensorflow as tf
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model, signature_keys=['serving_default', 'class_names'])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize == 'int8':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


# --- the command ----------------------------------------------------------------------

def check_output(output: str) -> str:
  """The absolute output folder, which must be new or empty (nothing is overwritten)."""
  output = os.path.abspath(output)
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise FileExistsError(f'--output={output} is not an empty folder; give a new folder '
                          f'(nothing there was changed).')
  return output


def check_options(fmt: str, batch: int, dtype: str, quantize: str) -> None:
  """Raises ValueError naming the flag to fix."""
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r} is not one of {", ".join(FORMATS)}.')
  if batch < 1:
    raise ValueError(f'--batch={batch}: give a batch size >= 1.')
  if dtype not in DTYPES:
    raise ValueError(f'--dtype={dtype!r} is not one of {", ".join(DTYPES)}.')
  if quantize not in QUANTIZE:
    raise ValueError(f'--quantize={quantize!r} is not one of {", ".join(QUANTIZE)}.')
  if quantize != 'none' and fmt != 'tflite':
    raise ValueError(f'--quantize={quantize} applies to --format=tflite only.')
  if dtype == 'bfloat16' and fmt == 'tflite':
    raise ValueError('--dtype=bfloat16: TFLite has no bfloat16 kernels; use --dtype=float32, '
                     'with --quantize=int8 for a smaller model.')


def write_info(output: str, info: dict, config) -> None:
  """output/config.json (the config, as training writes it) and output/export.json."""
  workdirs.save_config(config, output)
  with open(os.path.join(output, INFO_FILE), 'w') as f:
    json.dump(info, f, indent=2)


def prepare(workdir: str, fmt: str, output: str, batch: int = 1, dtype: str = 'float32',
            quantize: str = 'none') -> tuple:
  """Checks the arguments and restores the model, writing nothing.

  Returns (output folder, task, params, step); raises ValueError,
  FileNotFoundError or FileExistsError naming the argument to fix.
  """
  check_options(fmt, batch, dtype, quantize)
  output = check_output(output)
  task, params, step = load(workdir, dtype)
  return output, task, params, step


def write(output: str, task, params, fmt: str, batch: int = 1, quantize: str = 'none',
          info: Optional[dict] = None) -> str:
  """Writes the detector (task, params) as `fmt` into `output`, then config.json
  and export.json (info plus what describes the artifact). Returns `output`."""
  fn = detection_fn(task, params)
  config = task.config
  info = dict(info or {}, format=fmt, dtype=config.model.dtype, quantize=quantize,
              batch=None if fmt == 'jax' else batch, image_size=config.model.image_size,
              outputs=list(OUTPUTS), class_names=list(task.class_names))
  os.makedirs(output, exist_ok=True)
  if fmt == 'jax':
    with open(os.path.join(output, JAX_FILE), 'wb') as f:
      f.write(export_jax(fn).serialize())
  else:
    signatures = tf_signatures(fn, batch, info['class_names'])
    if fmt == 'saved_model':
      save_saved_model(signatures, output)
    else:
      with tempfile.TemporaryDirectory() as tmp:
        save_saved_model(signatures, tmp)
        flatbuffer = to_tflite(tmp, quantize)
      with open(os.path.join(output, TFLITE_FILE), 'wb') as f:
        f.write(flatbuffer)
  write_info(output, info, config)
  return output


def export(workdir: str, fmt: str, output: str, batch: int = 1, dtype: str = 'float32',
           quantize: str = 'none') -> str:
  """Exports the latest checkpoint in `workdir` as `fmt` (see FORMATS) to the new
  folder `output`; returns it. Arguments are checked before anything is written."""
  output, task, params, step = prepare(workdir, fmt, output, batch, dtype, quantize)
  info = {'workdir': os.path.abspath(workdir), 'step': int(step)}
  return write(output, task, params, fmt, batch, quantize, info)


def define_flags() -> None:
  """The command's flags; defined only when it runs (ssd_jax.convert, which tests
  import beside this module, has flags of the same names)."""
  flags.DEFINE_string('workdir', None, 'Workdir of a training run (config.json, '
                      'checkpoints/); its latest checkpoint is exported.')
  flags.DEFINE_string('format', None, f'One of {", ".join(FORMATS)}.')
  flags.DEFINE_string('output', None, 'New (or empty) folder for the artifact.')
  flags.DEFINE_integer('batch', 1, 'saved_model, tflite: the fixed batch size (jax: any).')
  flags.DEFINE_string('dtype', 'float32', f'Compute dtype, one of {", ".join(DTYPES)}.')
  flags.DEFINE_string('quantize', 'none', 'tflite: "int8" for dynamic-range quantisation '
                      'of the weights.')


def fail(message: str) -> None:
  """One line on stderr and exit status 2: a command line to fix."""
  print(f'{os.path.basename(sys.argv[0])}: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  for name in ('workdir', 'format', 'output'):
    if not f[name].value:
      fail(f'--{name} is required; python -m ssd_jax.export --workdir=RUN '
           f'--format={"|".join(FORMATS)} --output=NEW_FOLDER')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  try:
    output, config, params, step = prepare(f.workdir, f.format, f.output, f.batch, f.dtype,
                                           f.quantize)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    fail(str(e))
  info = {'workdir': os.path.abspath(f.workdir), 'step': int(step)}
  print(f'wrote {write(output, config, params, f.format, f.batch, f.quantize, info)}',
        flush=True)


def parse_flags(argv):
  """absl's flag parsing, with a one-line error and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{e}; pass --helpfull to see the flags.')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
