"""A trained detector -> one self-contained artifact for serving or devices.

  python -m ssd_jax.export --workdir=/tmp/voc300 --format=saved_model --output=/tmp/voc300_export/saved_model
  python -m ssd_jax.export --workdir=/tmp/voc300 --format=tflite --quantize=full_int8 --output=/tmp/voc300_export/tflite_full_int8
  python -m ssd_jax.export --workdir=/tmp/voc300 --format=onnx --output=/tmp/voc300_export/onnx
  python -m ssd_jax.export --workdir=/tmp/voc300 --format=jax --output=/tmp/voc300_export/jax

Each export then scores the artifact it wrote and the checkpoint alike on the
config's eval split (--eval_images=N: its first N; --noevaluate: skip) with
the metric of --mode=eval, prints both and records them in export.json
(`accuracy`). `python -m ssd_jax.main --mode=eval --workdir=FOLDER` scores an
artifact folder again.

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
  tflite       detector.tflite: the network lowered to TFLite builtins, then
               TFLite's TFLite_Detection_PostProcess op for decoding and NMS (see
               ssd_jax/tflite.py for where its rules differ); batch 1, H and W
               dynamic (the interpreter resizes its input). Signatures as the
               SavedModel's. --quantize=int8: dynamic-range quantisation (int8
               weights, float activations), about a quarter of the size.
               --quantize=full_int8: every network operation int8 (calibrated on
               --representative_images images of the training data, or of
               --representative=FOLDER), input u8[1, S, S, 3] at the network's
               size S (export.json: `input_size`; resize first, as
               Detector.preprocess does); network operations that stay float are
               listed in export.json's `float_ops`, the post-process's (all
               float) in `postprocess_float_ops`.
  onnx         detector.onnx (opset 17): ONNX Resize, the network (through TFLite's
               lowering and tf2onnx) and the post-processing in ONNX's own
               operators, NonMaxSuppression included, to ssd_jax's rules (see
               ssd_jax/onnx_export.py); batch, H and W dynamic. Input `images`
               u8[B, H, W, 3], the four outputs by name.
  jax          detector.jax, a serialized jax.export.Exported of the same function
               with symbolic batch, height and width, for CPU and CUDA.
               Detector.from_exported(output) runs it without TensorFlow.

TensorFlow is imported only for saved_model, tflite and onnx.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any, Callable, NamedTuple, Optional

from ssd_jax import startup

if __name__ == '__main__':
  startup.begin()  # for the imports below and TensorFlow's in main

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from ssd_jax import artifacts, checkpoints, detector, lowering, tflite, workdirs  # noqa: E402
from ssd_jax.task import Task  # noqa: E402

FORMATS = ('saved_model', 'tflite', 'onnx', 'jax')
DTYPES = ('float32', 'bfloat16')
QUANTIZE = tflite.QUANTIZE
OUTPUTS = lowering.OUTPUTS
JAX_FILE = artifacts.JaxRuntime.FILE
TFLITE_FILE = artifacts.TfliteRuntime.FILE
ONNX_FILE = artifacts.OnnxRuntime.FILE
INFO_FILE = artifacts.INFO_FILE


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
  if fmt in ('jax', 'onnx') and batch != 1:
    raise ValueError(f'--batch={batch}: the {fmt} artifact takes any batch size; --batch '
                     f'fixes the batch of --format=saved_model only (drop it).')
  if fmt == 'tflite' and batch != 1:
    raise ValueError(f'--batch={batch}: a TFLite detector takes one image (its detection '
                     f'post-process op reads a batch of one); use --batch=1, or '
                     f'--format=saved_model for batches.')
  if dtype == 'bfloat16' and fmt == 'tflite':
    raise ValueError('--dtype=bfloat16: TFLite has no bfloat16 kernels; use --dtype=float32, '
                     'with --quantize=int8 for a smaller model.')
  if dtype == 'bfloat16' and fmt == 'onnx':
    raise ValueError('--dtype=bfloat16: the ONNX export is float32 only; use --dtype=float32.')
  if fmt == 'onnx':
    import importlib.util
    missing = [m for m in ('onnx', 'tf2onnx', 'onnxruntime') if not importlib.util.find_spec(m)]
    if missing:
      raise ValueError(f'--format=onnx needs {", ".join(missing)}: pip install -e ".[onnx]" '
                       f'(nothing was written).')


def write_info(output: str, info: dict, config) -> None:
  """output/config.json (the config, as training writes it) and output/export.json."""
  workdirs.save_config(config, output)
  with open(os.path.join(output, INFO_FILE), 'w') as f:
    json.dump(info, f, indent=2)


class Prepared(NamedTuple):
  """What `prepare` checked and restored."""
  output: str
  task: Task
  params: dict
  step: int
  representative: Optional[Callable]  # full_int8: tflite.representative_images
  eval_images: Optional[int]  # how many eval images to score the artifact on (None: none)
  eval_source: Optional[Any]  # the eval split they come from, opened (sources.Source)


def eval_split(task, eval_images: Optional[int]) -> tuple:
  """(the eval split's source, how many of its images an export scores: all when
  eval_images is None); opening the split now raises its error before anything
  is written."""
  from ssd_jax.data import input_pipeline
  if eval_images is not None and eval_images < 1:
    raise ValueError(f'--eval_images={eval_images}: give a count >= 1, or --noevaluate.')
  source = input_pipeline.opened(  # missing, unreadable or empty: refused
      input_pipeline.eval_source, task.config,
      'the export scores the artifact on that split; pass --noevaluate to skip it')
  return source, len(source) if eval_images is None else min(eval_images, len(source))


def prepare(workdir: str, fmt: str, output: str, batch: int = 1, dtype: str = 'float32',
            quantize: str = 'none', representative: Optional[str] = None,
            representative_images: int = tflite.REPRESENTATIVE_IMAGES,
            evaluate: bool = False, eval_images: Optional[int] = None) -> Prepared:
  """Checks the arguments and restores the model, writing nothing; opens the
  data the export will read (representative images, the eval split).

  Raises ValueError, FileNotFoundError or FileExistsError naming the argument
  to fix.
  """
  check_options(fmt, batch, dtype, quantize)
  if representative is not None and quantize != 'full_int8':
    raise ValueError('--representative calibrates --quantize=full_int8 only.')
  if representative_images != tflite.REPRESENTATIVE_IMAGES and quantize != 'full_int8':
    raise ValueError('--representative_images calibrates --quantize=full_int8 only.')
  if eval_images is not None and not evaluate:
    raise ValueError(f'--eval_images={eval_images} sets how many images score the artifact, '
                     f'which --noevaluate skips; drop one of the two.')
  output = check_output(output)
  task, params, step = load(workdir, dtype)
  calibration = None
  if quantize == 'full_int8':
    calibration = tflite.representative_images(task, representative, representative_images)
  source, count = eval_split(task, eval_images) if evaluate else (None, None)
  return Prepared(output, task, params, step, calibration, count, source)


def write(output: str, task, params, fmt: str, batch: int = 1, quantize: str = 'none',
          info: Optional[dict] = None, representative: Optional[Callable] = None) -> dict:
  """Writes the detector (task, params) as `fmt` into `output`, then config.json
  and export.json (info plus what describes the artifact); returns what
  export.json holds.
  representative: full_int8's calibration images (tflite.representative_images)."""
  config = task.config
  info = dict(info or {}, format=fmt, dtype=config.model.dtype, quantize=quantize,
              batch=None if fmt in ('jax', 'onnx') else batch,
              image_size=config.model.image_size,
              outputs=list(OUTPUTS), class_names=list(task.class_names))
  os.makedirs(output, exist_ok=True)
  if fmt == 'tflite':
    flatbuffer, network = tflite.to_tflite(task, params, quantize, representative)
    with open(os.path.join(output, TFLITE_FILE), 'wb') as f:
      f.write(flatbuffer)
    info['postprocess'] = tflite.POSTPROCESS_OP
    if quantize == 'full_int8':
      info['input_size'] = config.model.image_size  # uint8 [1, S, S, 3]
      info['float_ops'] = tflite.float_ops(network)
      # After the network, in float: the softmax, the top_k per class, the
      # box-coding reordering and the op's own input and output handling.
      info['postprocess_float_ops'] = {tflite.POSTPROCESS_OP: 1, **tflite.float_ops(flatbuffer)}
  elif fmt == 'onnx':
    from ssd_jax import onnx_export
    with open(os.path.join(output, ONNX_FILE), 'wb') as f:
      f.write(onnx_export.to_onnx(task, params))
    info['opset'] = onnx_export.OPSET
  else:
    fn = lowering.detection_fn(task, params)
    if fmt == 'jax':
      with open(os.path.join(output, JAX_FILE), 'wb') as f:
        f.write(lowering.export_jax(fn).serialize())
    else:
      lowering.save_saved_model(lowering.tf_signatures(fn, batch, info['class_names']),
                               output)
  write_info(output, info, config)
  return info


def accuracy(output: str, task, params, count: int, source=None) -> dict:
  """The artifact in `output` and the checkpoint's own detector scored alike on
  the first `count` eval images (of `source`, the eval split when already
  opened): {'metric', 'images', 'artifact', 'checkpoint'}."""
  from ssd_jax import evaluate
  artifact, checkpoint = evaluate.evaluate_detectors(
      task, [detector.Detector.from_exported(output), detector.Detector(task, params)], count,
      source)
  metric, value = evaluate.headline(artifact)
  return {'metric': metric, 'images': artifact['num_images'], 'artifact': value,
          'checkpoint': evaluate.headline(checkpoint)[1]}


def export(workdir: str, fmt: str, output: str, batch: int = 1, dtype: str = 'float32',
           quantize: str = 'none', representative: Optional[str] = None,
           representative_images: int = tflite.REPRESENTATIVE_IMAGES,
           evaluate: bool = False, eval_images: Optional[int] = None) -> str:
  """Exports the latest checkpoint in `workdir` as `fmt` (see FORMATS) to the new
  folder `output`; returns it. Arguments are checked before anything is written.

  evaluate: also score the artifact and the checkpoint on eval_images images of
  the eval split (all when None), into export.json's `accuracy` (what the
  command does unless --noevaluate).
  """
  p = prepare(workdir, fmt, output, batch, dtype, quantize, representative,
              representative_images, evaluate, eval_images)
  finish(p, workdir, fmt, batch, quantize)
  return p.output


class ScoringError(RuntimeError):
  """The artifact was written but scoring it failed."""


def finish(p: Prepared, workdir: str, fmt: str, batch: int, quantize: str) -> Optional[dict]:
  """Writes what `prepare` readied, then scores it when asked (p.eval_images);
  returns export.json's `accuracy` or None. ScoringError if the scoring fails
  (the artifact stays, and says how to score it again)."""
  info = write(p.output, p.task, p.params, fmt, batch, quantize,
               {'workdir': os.path.abspath(workdir), 'step': int(p.step)}, p.representative)
  if not p.eval_images:
    return None
  try:
    info['accuracy'] = accuracy(p.output, p.task, p.params, p.eval_images, p.eval_source)
  except (OSError, ValueError, RuntimeError) as e:
    raise ScoringError(f'wrote {p.output}, but scoring it on the eval split failed: {e}. Score '
                       f'it again with: python -m ssd_jax.main --mode=eval '
                       f'--workdir={p.output}') from e
  write_info(p.output, info, p.task.config)
  return info['accuracy']


def define_flags() -> None:
  """The command's flags; defined only when it runs (ssd_jax.convert, which tests
  import beside this module, has flags of the same names)."""
  flags.DEFINE_string('workdir', None, 'Workdir of a training run (config.json, '
                      'checkpoints/); its latest checkpoint is exported.')
  flags.DEFINE_string('format', None, f'One of {", ".join(FORMATS)}.')
  flags.DEFINE_string('output', None, 'New (or empty) folder for the artifact.')
  flags.DEFINE_integer('batch', 1, 'saved_model: the fixed batch size (jax, onnx: any; '
                       'tflite: 1).')
  flags.DEFINE_string('dtype', 'float32', f'Compute dtype, one of {", ".join(DTYPES)}.')
  flags.DEFINE_string('quantize', 'none', 'tflite: "int8" quantises the weights (dynamic '
                      'range); "full_int8" every operation but the post-process, with a '
                      'uint8 input of the network\'s size.')
  flags.DEFINE_string('representative', None, 'full_int8: a folder of images to calibrate '
                      'with (default: the config\'s training data).')
  flags.DEFINE_integer('representative_images', tflite.REPRESENTATIVE_IMAGES,
                       'full_int8: how many images calibrate the quantisation.')
  flags.DEFINE_bool('evaluate', True, 'Score the artifact and the checkpoint on the eval '
                    'split (into export.json); --noevaluate skips it.')
  flags.DEFINE_integer('eval_images', None, 'Score on the first N eval images (default all).')


def fail(message: str) -> None:
  """One line on stderr and exit status 2: a command line to fix."""
  print(f'{os.path.basename(sys.argv[0])}: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {argv[1:]}')
  startup.quiet_libraries()
  warnings.filterwarnings('ignore', message=artifacts.TFLITE_DEPRECATION)
  f = flags.FLAGS
  for name in ('workdir', 'format', 'output'):
    if not f[name].value:
      fail(f'--{name} is required; python -m ssd_jax.export --workdir=RUN '
           f'--format={"|".join(FORMATS)} --output=NEW_FOLDER')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  try:
    p = prepare(f.workdir, f.format, f.output, f.batch, f.dtype, f.quantize, f.representative,
                f.representative_images, f.evaluate, f.eval_images)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    fail(str(e))
  if f.format != 'jax':  # the converters (the eval split's tf.data already imported it)
    import tensorflow  # noqa: F401
  startup.done()
  try:
    a = finish(p, f.workdir, f.format, f.batch, f.quantize)
  except ScoringError as e:
    fail(str(e))
  print(f'wrote {p.output}', flush=True)
  if a:
    print(f'{a["metric"]} on {a["images"]} eval images: artifact {a["artifact"]:.4f}, '
          f'checkpoint {a["checkpoint"]:.4f}', flush=True)


def parse_flags(argv):
  """absl's flag parsing, with a one-line error and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{e}; pass --helpfull to see the flags.')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
