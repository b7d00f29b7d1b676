"""ssd_jax.export: each artifact against the JAX Detector, on scikit-image's photos.

Each test runs for two models written as workdirs: the small test SSD (96x96
input, two classes) at its random initialisation, and SSDLite320 (two classes;
BatchNorm statistics, depthwise convolutions) with random variables. Unnormalised VGG features make the first's scores spread
(about 0.75 to 0.99 over the 200 kept per photo) rather than uniform, so a
matching on class, box and score is a real comparison.
"""
import json
import logging as py_logging
import pathlib
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest
from PIL import Image

from ssd_jax import config_lib, convert, detector, export, tflite
from ssd_jax.task import Task
from ssd_jax.testing import detections, synthetic

tf = pytest.importorskip('tensorflow')
pytestmark = pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCORE_TOL, BOX_TOL = 1e-3, 0.5  # float artifacts: probabilities, pixels
# TFLite float under ssd_jax's rules: share of the detections kept (0.98 measured on the
# VGG model, 0.89 on random SSDLite, whose 300 near-equal boxes per photo sit at the edges)
FLOAT_FLOOR = 0.8
# int8 (dynamic range): a detection of the Detector with score > INT8_MIN_SCORE is
# kept when the int8 model has one of the same class, IoU >= 0.5, score within 0.02.
INT8_MIN_SCORE, INT8_SCORE_TOL, INT8_MIN_IOU = 0.5, 0.02, 0.5
INT8_FLOOR = 0.85  # share kept, over all photos (0.95 to 0.97 measured)
FULL_INT8_FLOOR = 0.8  # full int8 (activations too) on 8 photos: 0.89 measured


def random_ssdlite(load_config):
  """SSDLite320 with two classes and random variables (synthetic.random_variables:
  scores spread, every BatchNorm's arithmetic exercised). (The matching is
  exact: some other draws put one of the 1200 detections at an NMS tie, IoU at
  the threshold within float rounding, which either side may then keep.)"""
  config = load_config('voc_ssdlite320')
  config.data.class_names, config.model.num_classes = ('thing', 'other'), None
  config = config_lib.validate(config)
  return config, synthetic.random_variables(config)


@pytest.fixture(scope='module', params=['ssd', 'ssdlite'])
def workdir(request, tmp_path_factory, load_config):
  """A workdir (config.json and a checkpoint) of the small test SSD, or of SSDLite320."""
  if request.param == 'ssdlite':
    config, variables = random_ssdlite(load_config)
  else:
    config = synthetic.tiny_config(load_config('voc300'))
    config.data.class_names = ('thing', 'other')
    config = config_lib.validate(config)
    variables = jax.device_get(synthetic.init_params(config, jax.random.key(0)))
  return convert.save(str(tmp_path_factory.mktemp('run') / 'w'), variables, {'format': 'test'},
                      config)


@pytest.fixture(scope='module')
def photos():
  return synthetic.sample_photos()[:4]  # astronaut, chelsea, coffee, rocket: 4 sizes


@pytest.fixture(scope='module')
def reference(workdir, photos):
  return detector.Detector.from_checkpoint(workdir).detect(photos)


@pytest.fixture(scope='module')
def exported(workdir, tmp_path_factory):
  """(format, quantize) -> its output folder, each exported once."""
  folders = {}

  def get(fmt, quantize='none'):
    if (fmt, quantize) not in folders:
      out = str(tmp_path_factory.mktemp('export') / f'{fmt}_{quantize}')
      folders[fmt, quantize] = export.export(workdir, fmt, out, quantize=quantize)
    return folders[fmt, quantize]

  return get


def first(outputs: dict) -> dict:
  """Outputs of a batch of one -> its detections (the num_detections leading ones)."""
  n = int(np.asarray(outputs['num_detections'])[0])
  scores = np.asarray(outputs['scores'])[0]
  assert np.all(scores[n:] == 0) and np.all(scores[:n] > 0)
  return {k: np.asarray(outputs[k])[0][:n] for k in ('boxes', 'scores', 'classes')}


def tflite_detections(path, photos):
  interpreter = tf.lite.Interpreter(model_path=path)
  assert interpreter.get_signature_runner('class_names')()['class_names'].tolist() == [
      b'thing', b'other']
  run = interpreter.get_signature_runner('serving_default')
  return [first(run(images=p[None])) for p in photos]


def test_saved_model_gives_the_detectors_detections(exported, photos, reference):
  model = tf.saved_model.load(exported('saved_model'))
  assert model.signatures['class_names']()['class_names'].numpy().tolist() == [b'thing',
                                                                               b'other']
  serve = model.signatures['serving_default']
  for photo, ours in zip(photos, reference, strict=True):
    out = serve(images=tf.constant(photo[None]))
    assert out['boxes'].dtype == tf.float32 and out['classes'].dtype == tf.int32
    assert out['num_detections'].dtype == tf.int32
    theirs = first({k: v.numpy() for k, v in out.items()})
    assert len(theirs['scores']) == len(ours['scores']) > 100
    assert detections.unmatched(ours, theirs, SCORE_TOL, BOX_TOL) == []


def test_saved_model_takes_the_batch_it_was_exported_for(workdir, photos, tmp_path):
  crops = np.stack([p[:280, :360] for p in photos[:2]])  # one size, as a batch must be
  out = export.export(workdir, 'saved_model', str(tmp_path / 'b2'), batch=2)
  serve = tf.saved_model.load(out).signatures['serving_default']
  assert serve.structured_input_signature[1]['images'].shape.as_list() == [2, None, None, 3]
  found = {k: v.numpy() for k, v in serve(images=tf.constant(crops)).items()}
  ours = detector.Detector.from_checkpoint(workdir).detect(list(crops))
  for i in range(2):
    theirs = first({k: v[i:i + 1] for k, v in found.items()})
    assert detections.unmatched(ours[i], theirs, SCORE_TOL, BOX_TOL) == []


@pytest.fixture(scope='module')
def op_rules_workdir(workdir, tmp_path_factory):
  """The same model, its config set to the rules of TFLite's post-process op
  (unclipped boxes in NMS; see ssd_jax/tflite.py)."""
  task, variables, _ = export.load(workdir)
  return convert.save(str(tmp_path_factory.mktemp('op_rules') / 'w'), variables,
                      {'format': 'test'}, tflite.with_op_rules(task.config))


def test_tflite_float_gives_the_detectors_detections_under_the_ops_rules(
    op_rules_workdir, photos, tmp_path):
  out = export.export(op_rules_workdir, 'tflite', str(tmp_path / 'tflite'))
  path = pathlib.Path(out) / export.TFLITE_FILE
  assert b'Flex' not in path.read_bytes()  # TFLite builtins and the post-process op only
  found = tflite.ops(path.read_bytes())
  assert found[tflite.POSTPROCESS_OP] == 1 and 'WHILE' not in found
  reference = detector.Detector.from_checkpoint(op_rules_workdir).detect(photos)
  for ours, theirs in zip(reference, tflite_detections(str(path), photos), strict=True):
    assert len(theirs['scores']) == len(ours['scores']) > 100
    assert detections.unmatched(ours, theirs, SCORE_TOL, BOX_TOL) == []


def test_tflite_keeps_every_class_with_any_thread_count(load_config, photos, tmp_path):
  """Five classes: TFLite's multi-threaded NMS skips the column numbered like the
  thread count unless a zero column stands there (tflite.op_columns)."""
  assert tflite.op_columns(5) == [1, 2] + [-1] * (tflite.THREAD_SAFE_COLUMNS - 1) + [3, 4, 5]
  config = synthetic.tiny_config(load_config('voc300'))
  config.data.class_names, config.model.num_classes = ('a', 'b', 'c', 'd', 'e'), None
  config = tflite.with_op_rules(config_lib.validate(config))
  variables = jax.device_get(synthetic.init_params(config, jax.random.key(1)))
  run = convert.save(str(tmp_path / 'w'), variables, {'format': 'test'}, config)
  out = pathlib.Path(export.export(run, 'tflite', str(tmp_path / 'tflite')))
  reference = detector.Detector.from_checkpoint(run).detect(photos[:2])
  assert set(np.concatenate([r['classes'] for r in reference]).tolist()) == {1, 2, 3, 4, 5}
  for threads in (1, 2, 3, 4):
    interpreter = tf.lite.Interpreter(model_path=str(out / export.TFLITE_FILE),
                                      num_threads=threads)
    serve = interpreter.get_signature_runner('serving_default')
    for ours, photo in zip(reference, photos[:2]):
      theirs = first(serve(images=photo[None]))
      assert detections.unmatched(ours, theirs, SCORE_TOL, BOX_TOL) == [], threads
  with mock.patch('os.cpu_count', return_value=33):  # 33 threads would skip class 3
    loaded = detector.Detector.from_exported(str(out)).detect(photos[:2])
  for ours, theirs in zip(reference, loaded, strict=True):
    assert detections.unmatched(ours, theirs, SCORE_TOL, BOX_TOL) == []


def test_tflite_keeps_scores_above_the_threshold_not_at_it(load_config, tmp_path):
  """The op keeps scores >= its threshold, ssd_jax scores > eval.score_threshold:
  one class, every logit 0 (probability 0.5, the threshold) but one box's."""
  config = synthetic.tiny_config(load_config('voc300'))
  config.data.class_names, config.model.num_classes = ('a',), None
  config.eval.score_threshold = 0.5
  task = Task.of(config_lib.validate(config))
  attributes = tflite.save_postprocess(task, str(tmp_path / 'post'), fixed_size=False)
  interpreter = tf.lite.Interpreter(
      model_content=tflite.convert_postprocess(str(tmp_path / 'post'), attributes))
  logits = np.zeros((1, len(task.default_boxes), 2), np.float32)
  logits[0, 7, 1] = 1.0  # probability 0.73
  out = interpreter.get_signature_runner('serving_default')(
      images=np.zeros((1, 32, 32, 3), np.uint8),
      box_deltas=np.zeros((*logits.shape[:2], 4), np.float32), logits=logits)
  assert out['num_detections'].tolist() == [1]
  assert float(out['scores'][0, 0]) == pytest.approx(1 / (1 + np.exp(-1.0)))


def tied_probabilities(batch: int = 1):
  """f32[B, A=60, C=4] class probabilities taking 3 values (full-int8 outputs take
  a few hundred): every class's 7th best is tied with many others."""
  return np.random.default_rng(3).choice([0.1, 0.3, 0.6], (batch, 60, 4)).astype(np.float32)


def numpy_best_of_each_class(probs: np.ndarray, k: int) -> np.ndarray:
  """[B, A, C] -> each foreground class's k best kept, ties to the lower index
  (postprocess.py's jax.lax.top_k), the rest 0; background unchanged."""
  kept = np.zeros_like(probs)
  kept[..., 0] = probs[..., 0]
  for b in range(probs.shape[0]):
    for c in range(1, probs.shape[2]):
      best = np.argsort(-probs[b, :, c], kind='stable')[:k]
      kept[b, best, c] = probs[b, best, c]
  return kept


def test_tflite_sends_exactly_top_k_per_class_to_nms_ties_to_the_lower_index():
  probs = tied_probabilities()
  fn = tf.function(lambda p: tflite.best_of_each_class(p, 7), autograph=False,
                   input_signature=[tf.TensorSpec(probs.shape, tf.float32)])
  flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions(
      [fn.get_concrete_function()], fn).convert()
  interpreter = tf.lite.Interpreter(model_content=flatbuffer)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]['index'], probs)
  interpreter.invoke()
  kept = interpreter.get_tensor(interpreter.get_output_details()[0]['index'])
  assert (kept[0, :, 1:] > 0).sum(axis=0).tolist() == [7, 7, 7]
  np.testing.assert_array_equal(kept, numpy_best_of_each_class(probs, 7))


def test_onnx_sends_exactly_top_k_per_class_to_nms_ties_to_the_lower_index():
  pytest.importorskip('onnx')
  ort = pytest.importorskip('onnxruntime')
  from onnx import TensorProto, helper
  from ssd_jax import onnx_export
  probs = tied_probabilities(batch=2).transpose(0, 2, 1)  # the network's [B, C, A]
  graph = helper.make_graph([], 'candidates', [helper.make_tensor_value_info(
      'probs', TensorProto.FLOAT, list(probs.shape))], [])
  scores = onnx_export._candidates(onnx_export._Graph(graph), 'probs', 7)
  graph.output.append(helper.make_tensor_value_info(scores, TensorProto.FLOAT, None))
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', onnx_export.OPSET)])
  session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
  (kept,) = session.run(None, {'probs': probs})
  expected = numpy_best_of_each_class(probs.transpose(0, 2, 1), 7)[..., 1:].transpose(0, 2, 1)
  np.testing.assert_array_equal(kept, expected)


def test_tflite_float_keeps_the_detectors_detections(exported, photos, reference):
  """Under ssd_jax's own rules (clipped boxes in NMS) the op differs only at
  the image border: a share of the detections kept."""
  path = pathlib.Path(exported('tflite')) / export.TFLITE_FILE
  kept = [detections.has_partner(ours_minus_names(ours), theirs, SCORE_TOL, min_iou=0.99)
          for ours, theirs in zip(reference, tflite_detections(str(path), photos), strict=True)]
  share = np.concatenate(kept).mean()
  print(f'TFLite float under ssd_jax rules: {share:.3f} of {sum(map(len, kept))} kept')
  assert share >= FLOAT_FLOOR


def ours_minus_names(found: dict) -> dict:
  return {k: v for k, v in found.items() if k != 'names'}


def test_onnx_gives_the_detectors_detections_with_any_batch(exported, photos, reference,
                                                             workdir):
  import onnx
  out = pathlib.Path(exported('onnx'))
  model = onnx.load(str(out / export.ONNX_FILE))
  assert model.opset_import[0].version >= 17
  assert sum(n.op_type == 'NonMaxSuppression' for n in model.graph.node) == 1
  det = detector.Detector.from_exported(str(out))
  for ours, theirs in zip(reference, det.detect(photos), strict=True):
    assert len(theirs['scores']) == len(ours['scores']) > 100
    assert detections.unmatched(ours, theirs, SCORE_TOL, BOX_TOL) == []
  crops = np.stack([p[:280, :360] for p in photos[:3]])  # a batch of 3, one size
  found = det.run(crops)  # the ONNX runtime, on the whole batch
  expected = detector.Detector.from_checkpoint(workdir).detect(list(crops))
  for i in range(3):
    theirs = first({k: v[i:i + 1] for k, v in found.items()})
    assert detections.unmatched(expected[i], theirs, SCORE_TOL, BOX_TOL) == []


def needs_trained_weights(workdir):
  """Reduced precision on random SSDLite weights: its 300 scores per photo lie
  close together, so a perturbation within the tolerances reorders them
  (measured on this net: int8 keeps 0.37, bfloat16 0.62 of the detections above
  0.5, against 0.95-0.97 and 0.995 on the VGG model). Judging int8 and
  bfloat16 SSDLite needs trained weights, which this machine cannot download."""
  if 'ssdlite' in pathlib.Path(workdir, 'config.json').read_text():
    pytest.skip('int8 / bfloat16 SSDLite is judged on trained weights only (see '
                'needs_trained_weights)')


def test_int8_tflite_keeps_most_confident_detections(exported, photos, reference, workdir):
  folder = pathlib.Path(exported('tflite', 'int8'))
  size = (folder / export.TFLITE_FILE).stat().st_size
  float_size = (pathlib.Path(exported('tflite')) / export.TFLITE_FILE).stat().st_size
  assert size < 0.45 * float_size
  needs_trained_weights(workdir)
  kept = []
  for ours, theirs in zip(reference, tflite_detections(str(folder / export.TFLITE_FILE),
                                                        photos), strict=True):
    confident = {k: v[ours['scores'] > INT8_MIN_SCORE] for k, v in ours.items() if k != 'names'}
    kept.append(detections.has_partner(confident, theirs, INT8_SCORE_TOL,
                                       min_iou=INT8_MIN_IOU))
  share = np.concatenate(kept).mean()
  print(f'int8 TFLite: {share:.3f} of {sum(map(len, kept))} detections with score > '
        f'{INT8_MIN_SCORE} kept; {size / 1e6:.2f} MB against {float_size / 1e6:.2f} MB')
  assert share >= INT8_FLOOR


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
  """scikit-image's photos as PNG files: full_int8's calibration images."""
  folder = tmp_path_factory.mktemp('photos')
  for i, photo in enumerate(synthetic.sample_photos()):
    Image.fromarray(photo).save(folder / f'{i}.png')
  return folder


# Operations only the network has: none may compute in float in a full_int8 model.
# (The softmax is the post-process's, as in postprocess.py: float, after the heads.)
NETWORK_OPS = {'CONV_2D', 'DEPTHWISE_CONV_2D', 'MAX_POOL_2D', 'HARD_SWISH', 'L2_NORMALIZATION'}


def test_full_int8_tflite_is_int8_but_the_postprocess(workdir, photos, reference, photo_folder,
                                                      tmp_path):
  out = pathlib.Path(export.export(workdir, 'tflite', str(tmp_path / 'full'),
                                   quantize='full_int8', representative=str(photo_folder),
                                   representative_images=8))
  info = json.loads((out / export.INFO_FILE).read_text())
  size = info['image_size']
  assert info['float_ops'] == {} and info['input_size'] == size
  flatbuffer = (out / export.TFLITE_FILE).read_bytes()
  interpreter = tf.lite.Interpreter(model_content=flatbuffer)
  (image,) = interpreter.get_signature_runner('serving_default').get_input_details().values()
  assert image['dtype'] == np.uint8 and list(image['shape']) == [1, size, size, 3]
  assert tflite.ops(flatbuffer)[tflite.POSTPROCESS_OP] == 1
  assert not NETWORK_OPS & set(tflite.float_ops(flatbuffer))
  post = info['postprocess_float_ops']
  assert post == {tflite.POSTPROCESS_OP: 1, **tflite.float_ops(flatbuffer)} and 'SOFTMAX' in post
  # hard-swish written as ADD + MUL, which XNNPACK runs in int8 (no HARD_SWISH op)
  assert 'HARD_SWISH' not in tflite.ops(flatbuffer)
  needs_trained_weights(workdir)
  found = detector.Detector.from_exported(str(out)).detect(photos)
  kept = [detections.has_partner(
      {k: v[ours['scores'] > INT8_MIN_SCORE] for k, v in ours_minus_names(ours).items()},
      theirs, INT8_SCORE_TOL, min_iou=INT8_MIN_IOU) for ours, theirs in zip(reference, found)]
  share = np.concatenate(kept).mean()
  print(f'full int8 TFLite: {share:.3f} of {sum(map(len, kept))} detections with score > '
        f'{INT8_MIN_SCORE} kept')
  assert share >= FULL_INT8_FLOOR


def test_full_int8_resnet_keeps_its_pooled_features(load_config, photo_folder):
  """NVIDIA's SSD300-ResNet50 (an eighth of its width, random variables): its stem
  pools 3x3, stride 2, padding 1, which TFLite writes as a pad and a pool. Padded
  with -inf, calibration gave the pooled tensor a scale of 1e36 (every value one
  integer) and XNNPACK refused the model. The full-int8 network must load with
  XNNPACK and give the JAX network's outputs up to int8 error."""
  config = load_config('coco300_resnet50')
  config.model.width, config.data.class_names, config.model.num_classes = 0.125, ('a', 'b'), None
  task = Task.of(config)
  variables = synthetic.random_variables(task.config)
  representative = tflite.representative_images(task, str(photo_folder), 8)
  _, network = tflite.to_tflite(task, variables, 'full_int8', representative)
  pixels = next(representative())  # f32[1, S, S, 3], whole values
  run = tf.lite.Interpreter(model_content=network).get_signature_runner('serving_default')
  theirs = run(images=pixels.astype(np.uint8))
  ours = jax.device_get(tflite.network_fn(task, variables, resize=False)(pixels))
  for name in tflite.NETWORK_OUTPUTS:
    correlation = np.corrcoef(ours[name].ravel(), theirs[name].ravel())[0, 1]
    assert correlation > 0.95, (name, correlation)


def test_bfloat16_jax_artifact_stays_close(workdir, photos, reference, tmp_path):
  needs_trained_weights(workdir)
  out = export.export(workdir, 'jax', str(tmp_path / 'bf16'), dtype='bfloat16')
  assert json.loads((pathlib.Path(out) / export.INFO_FILE).read_text())['dtype'] == 'bfloat16'
  found = detector.Detector.from_exported(out).detect(photos[:2])
  kept = np.concatenate([detections.has_partner(ours, theirs, INT8_SCORE_TOL,
                                                min_iou=INT8_MIN_IOU)
                         for ours, theirs in zip(reference, found)])
  assert kept.mean() >= INT8_FLOOR  # 0.995 measured


FRESH_PROCESS_DETECT = '''
import json, sys
for name in ('tensorflow', 'tensorflow_datasets'):  # as on a machine without them
  sys.modules[name] = None
import numpy as np
from ssd_jax import detector
from ssd_jax.testing import synthetic
found = detector.Detector.from_exported(sys.argv[1]).detect(synthetic.sample_photos()[:4])
print(json.dumps([{k: np.asarray(v).tolist() for k, v in f.items()} for f in found]))
'''


def test_jax_artifact_reloads_in_a_fresh_process(workdir, photos, reference, tmp_path):
  out = tmp_path / 'jax'
  run = subprocess.run([sys.executable, '-m', 'ssd_jax.export', f'--workdir={workdir}',
                        '--format=jax', f'--output={out}', '--noevaluate'], capture_output=True, text=True,
                       cwd=ROOT, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  params = sum(x.nbytes for x in jax.tree.leaves(export.load(workdir)[1]))
  assert params < (out / export.JAX_FILE).stat().st_size < 1.2 * params + 1e6  # weights inside
  run = subprocess.run([sys.executable, '-c', FRESH_PROCESS_DETECT, str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  fresh = json.loads(run.stdout.strip().splitlines()[-1])
  here = detector.Detector.from_exported(str(out)).detect(photos)
  for theirs, mine, ours in zip(fresh, here, reference, strict=True):
    assert theirs['names'] == mine['names']
    for key in ('boxes', 'scores', 'classes'):
      np.testing.assert_array_equal(np.asarray(theirs[key], mine[key].dtype), mine[key])
    assert detections.unmatched(ours, mine, SCORE_TOL, BOX_TOL) == []


def run_export(*args):
  return subprocess.run([sys.executable, '-m', 'ssd_jax.export', *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=300, check=False)


def test_bad_command_lines_get_one_line_that_names_the_fix(workdir, tmp_path):
  missing = run_export(f'--workdir={tmp_path / "nowhere"}', '--format=jax',
                       f'--output={tmp_path / "o"}')
  unknown = run_export(f'--workdir={workdir}', '--format=trt', f'--output={tmp_path / "o"}')
  for result, text in ((missing, 'nowhere does not exist; give the workdir of a training run'),
                       (unknown, "--format='trt' is not one of saved_model, tflite, onnx, jax")):
    assert result.returncode == 2, result.stderr[-2000:]
    assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'o').exists()


def test_bad_arguments_are_refused_before_anything_is_written(workdir, tmp_path, monkeypatch):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='has no config.json; give the workdir'):
    export.prepare(str(tmp_path / 'empty'), 'jax', str(tmp_path / 'o'))
  (tmp_path / 'empty' / 'config.json').write_text((pathlib.Path(workdir) / 'config.json')
                                                  .read_text())
  with pytest.raises(FileNotFoundError, match='no checkpoint in .*train first'):
    export.prepare(str(tmp_path / 'empty'), 'jax', str(tmp_path / 'o'))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep.txt').write_text('mine')
  with pytest.raises(FileExistsError, match='full is not an empty folder; give a new folder'):
    export.prepare(workdir, 'jax', str(tmp_path / 'full'))
  with pytest.raises(ValueError, match='--quantize=int8 applies to --format=tflite only'):
    export.prepare(workdir, 'saved_model', str(tmp_path / 'o'), quantize='int8')
  with pytest.raises(ValueError, match='--dtype=bfloat16: TFLite has no bfloat16 kernels'):
    export.prepare(workdir, 'tflite', str(tmp_path / 'o'), dtype='bfloat16')
  with pytest.raises(ValueError, match='--batch=2: a TFLite detector takes one image'):
    export.prepare(workdir, 'tflite', str(tmp_path / 'o'), batch=2)
  with pytest.raises(ValueError, match='--representative calibrates --quantize=full_int8 only'):
    export.prepare(workdir, 'tflite', str(tmp_path / 'o'), representative=str(tmp_path))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no_data'))  # the eval split is missing
  with pytest.raises(FileNotFoundError, match='voc/2007 was not found.*pass --noevaluate'):
    export.prepare(workdir, 'jax', str(tmp_path / 'o'), evaluate=True)
  with pytest.raises(ValueError, match='--eval_images=0: give a count >= 1, or --noevaluate'):
    export.prepare(workdir, 'jax', str(tmp_path / 'o'), evaluate=True, eval_images=0)
  with pytest.raises(FileNotFoundError, match='holds no images'):  # an empty calibration folder
    export.prepare(workdir, 'tflite', str(tmp_path / 'o'), quantize='full_int8',
                   representative=str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='voc/2007 was not found.*unless given '
                     '--representative=FOLDER'):  # default calibration: the training data
    export.prepare(workdir, 'tflite', str(tmp_path / 'o'), quantize='full_int8')
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'cut.jpg').write_bytes(b'\xff\xd8\xff')
  with pytest.raises(ValueError, match='no readable image to calibrate'):
    export.prepare(workdir, 'tflite', str(tmp_path / 'o'), quantize='full_int8',
                   representative=str(tmp_path / 'bad'))
  for kwargs, message in (
      (dict(quantize='full_int8', representative_images=0), '--representative_images=0: give'),
      (dict(representative_images=8), '--representative_images calibrates --quantize=full_int8'),
      (dict(eval_images=5), '--eval_images=5 sets how many .* --noevaluate skips')):
    with pytest.raises(ValueError, match=message):
      export.prepare(workdir, 'tflite', str(tmp_path / 'o'), **kwargs)
  for fmt in ('jax', 'onnx'):
    with pytest.raises(ValueError, match=f'--batch=2: the {fmt} artifact takes any batch size'):
      export.prepare(workdir, fmt, str(tmp_path / 'o'), batch=2)
  assert not (tmp_path / 'o').exists()
  assert [p.name for p in (tmp_path / 'full').iterdir()] == ['keep.txt']


def test_unreadable_representative_images_are_named_and_skipped(workdir, tmp_path, caplog):
  for name, photo in zip(('a.png', 'c.png'), synthetic.sample_photos()):
    Image.fromarray(photo).save(tmp_path / name)
  (tmp_path / 'b.jpg').write_bytes(b'\xff\xd8\xff')  # a cut JPEG
  task, _, _ = export.load(workdir)
  with caplog.at_level(py_logging.WARNING):
    pixels = list(tflite.representative_images(task, str(tmp_path), 8)())
  size = task.image_size
  assert len(pixels) == 2 and all(p.shape == (1, size, size, 3) for p in pixels)
  assert 'b.jpg' in caplog.text and 'Calibrating without it' in caplog.text


def test_a_representative_folder_that_is_not_there_is_named_as_that_flag(workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r'^--representative=\S*nothing matches no file'):
    export.prepare(workdir, 'tflite', str(tmp_path / 'o'), quantize='full_int8',
                   representative=str(tmp_path / 'nothing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no images .*; point --representative at'):
    export.prepare(workdir, 'tflite', str(tmp_path / 'o'), quantize='full_int8',
                   representative=str(tmp_path / 'empty'))
  assert not (tmp_path / 'o').exists()


def test_onnx_without_its_packages_says_what_to_install(workdir, tmp_path):
  code = ('import sys; sys.modules["tf2onnx"] = None\n'
          'from ssd_jax import export\n'
          f'export.prepare({str(workdir)!r}, "onnx", {str(tmp_path / "o")!r})')
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                       timeout=300, check=False)
  assert run.returncode == 1
  assert ('--format=onnx needs tf2onnx: pip install -e ".[onnx]" (nothing was written)'
          in run.stderr)
  assert not (tmp_path / 'o').exists()
