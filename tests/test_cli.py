"""The command line as a user meets it: an expected error is one clear line (its
traceback only under --verbose), optional fields can be unset with None, and
drawn labels stay readable and inside the picture."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from ssd_jax import config_lib, drawing, startup, workflows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
  return subprocess.run([sys.executable, '-m', 'ssd_jax.main', *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=300)


def test_missing_data_is_one_clear_line_and_verbose_shows_the_traceback(tmp_path):
  args = [f'--config={ROOT}/configs/voc300.py', f'--workdir={tmp_path / "run"}',
          f'--config.data.data_dir={tmp_path}']
  quiet = run_main(*args)
  assert quiet.returncode == 1, quiet.stderr[-2000:]
  assert 'Traceback' not in quiet.stderr
  errors = [line for line in quiet.stderr.splitlines() if ': error: ' in line]
  assert len(errors) == 1 and 'TFDS dataset voc/2007 was not found in' in errors[0]
  assert 'download_and_prepare()' in errors[0]  # the fix is on the same line
  assert 'has no dataset_info.json' not in quiet.stderr  # TFDS's notes on the folders it tried
  verbose = run_main(*args, '--verbose')
  assert verbose.returncode == 1
  assert 'Traceback (most recent call last)' in verbose.stderr
  assert 'FileNotFoundError: TFDS dataset voc/2007 was not found' in verbose.stderr


def test_none_unsets_an_optional_field_and_is_refused_for_others(tmp_path):
  args = [f'--config={ROOT}/configs/shapes.py', f'--workdir={tmp_path / "run"}',
          '--config.data.format=voc_folder', f'--config.data.root={tmp_path / "nothing"}']
  run = run_main(*args, '--config.optim.grad_clip_norm=None')  # 10.0 in shapes.py
  assert run.returncode == 1 and 'Traceback' not in run.stderr
  logged = run.stderr.split('config:\n', 1)[1]
  assert '  grad_clip_norm: null' in logged.splitlines()
  assert 'nothing does not exist: give a Pascal VOC folder' in run.stderr
  refused = run_main(*args, '--config.optim.learning_rate=None')
  assert refused.returncode == 2
  assert 'optim.learning_rate is not optional (default 0.001); give it a value' in refused.stderr


def test_library_info_lines_are_left_out_unless_asked_for():
  from absl import logging as absl_logging
  from orbax.checkpoint import checkpoint_manager
  record = lambda module, level: logging.LogRecord(  # noqa: E731
      'absl', level, module.__file__, 1, 'message', (), None)
  keep = startup.ssd_jax_info_only
  assert keep(record(workflows, logging.INFO))
  assert not keep(record(checkpoint_manager, logging.INFO))
  assert keep(record(checkpoint_manager, logging.WARNING))
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  try:
    startup.quiet_libraries(verbose=True)
    assert handler.filters == before
    startup.quiet_libraries()
    assert handler.filters == before + [keep]
  finally:
    handler.filters = before


def test_unset_fields_in_process(load_config):
  argv, unset = config_lib.split_unsets(['prog', '--config.optim.grad_clip_norm=None',
                                   '--config.train.batch_size=4', '--mode=None'])
  assert argv == ['prog', '--config.train.batch_size=4', '--mode=None']
  assert unset == ['optim.grad_clip_norm']
  c = load_config('shapes')
  config_lib.unset_fields(c, ['optim.grad_clip_norm', 'model.num_classes', 'anchors.min_sizes'])
  assert c.optim.grad_clip_norm is None and c.anchors.min_sizes is None
  assert config_lib.validate(c).model.num_classes == 5  # back from data.name's classes
  with pytest.raises(KeyError, match='grad_clip_nrm'):
    config_lib.unset_fields(c, ['optim.grad_clip_nrm'])


# --- drawn labels ---------------------------------------------------------------------

def test_label_text_colour_has_the_higher_contrast():
  assert drawing.text_colour((255, 255, 0)) == (0, 0, 0)        # yellow: black text
  assert drawing.text_colour((31, 119, 180)) == (255, 255, 255)  # tab:blue: white text
  assert drawing.text_colour((0, 0, 0)) == (255, 255, 255)
  assert drawing.relative_luminance((255, 255, 255)) == pytest.approx(1.0)
  assert drawing.relative_luminance((128, 128, 128)) == pytest.approx(0.2159, abs=1e-4)


def test_labels_stay_inside_the_image():
  image = (200, 100)
  assert drawing.label_origin((50, 40, 90, 90), (30, 12), image) == (50, 28)  # above the box
  assert drawing.label_origin((50, 5, 90, 90), (30, 12), image) == (50, 5)    # inside its top
  assert drawing.label_origin((190, 40, 199, 60), (30, 12), image) == (170, 28)  # right edge
  assert drawing.label_origin((-5, 95, 20, 99), (30, 12), image) == (0, 83)    # corner


def test_drawn_label_has_a_filled_background_in_the_box_colour():
  image = np.full((120, 160, 3), 250, np.uint8)  # a light photo
  found = {'boxes': np.array([[0.0, 0.0, 80.0, 60.0]]), 'scores': np.array([0.9]),
           'classes': np.array([1]), 'names': ['cat']}
  drawn = np.asarray(drawing.draw(image, found))
  colour = drawing._palette()[1]
  label = drawn[0:8, 0:30]  # the label sits inside the box's top-left corner
  assert not np.any(np.all(label == 250, axis=-1))  # filled: no photo shows through
  assert np.all(label[0] == colour)  # its top margin, in the box's colour
  ink = np.asarray(drawing.text_colour(colour), float)
  nearer_ink = (np.abs(label - ink).sum(-1) < np.abs(label - np.asarray(colour, float)).sum(-1))
  assert nearer_ink.sum() > 10  # the text (anti-aliased), in its contrasting colour
  assert np.all(drawn[100:, 100:] == 250)  # nothing drawn away from the box


# --- eval and predict without --config; missing data however the data dir is given ----

def test_eval_and_predict_without_config_read_the_workdir(tmp_path):
  """Without --config, eval and predict look for the workdir's config.json (an
  empty workdir: the error says so) instead of failing on the absent config."""
  for mode in (['--mode=eval'], ['--mode=predict', f'--input={tmp_path}']):
    run = run_main(*mode, f'--workdir={tmp_path}')
    assert run.returncode == 1, run.stderr[-2000:]
    assert f'no config.json in or above {tmp_path}' in run.stderr
    assert 'override failed' not in run.stderr


@pytest.mark.parametrize('given', ['flag', 'TFDS_DATA_DIR', 'default'])
@pytest.mark.parametrize('state', ['missing', 'empty'])
def test_a_missing_dataset_is_one_line_whichever_way_the_data_dir_is_given(
    tmp_path, given, state):
  """The same one-line fix, naming the folder TFDS looks in, for data.data_dir,
  TFDS_DATA_DIR and TFDS's default (~/tensorflow_datasets); a folder an
  interrupted preparation left empty is named as such."""
  data_dir = tmp_path / 'home' / 'tensorflow_datasets' if given == 'default' else tmp_path / 'd'
  if state == 'empty':
    (data_dir / 'voc' / '2007' / '5.0.0').mkdir(parents=True)
  env = {**os.environ, 'HOME': str(tmp_path / 'home')}
  env.pop('TFDS_DATA_DIR', None)
  args = [f'--config={ROOT}/configs/voc300.py', f'--workdir={tmp_path / "run"}']
  if given == 'flag':
    args.append(f'--config.data.data_dir={data_dir}')
  elif given == 'TFDS_DATA_DIR':
    env['TFDS_DATA_DIR'] = str(data_dir)
  run = subprocess.run([sys.executable, '-m', 'ssd_jax.main', *args], capture_output=True,
                       text=True, cwd=ROOT, timeout=300, env=env)
  assert run.returncode == 1 and 'Traceback' not in run.stderr, run.stderr[-3000:]
  error, = [line for line in run.stderr.splitlines() if ': error: ' in line]
  fix = (f"tfds.builder('voc/2007', data_dir='{data_dir}', file_format='array_record')"
         f".download_and_prepare()")
  assert fix in error
  if state == 'missing':
    assert f'TFDS dataset voc/2007 was not found in {data_dir}.' in error
  else:
    assert f'its folder {data_dir}/voc/2007/5.0.0 is empty' in error and 'Delete' in error


def test_the_detector_imports_no_training_code():
  """Inference (ssd_jax.detector) imports neither optax, nor TensorFlow or the
  tf.data pipeline, nor the training loop."""
  code = ('import sys, ssd_jax.detector; print(sorted(m for m in sys.modules if m.split(".")[0] '
          'in ("optax", "tensorflow") or m in ("ssd_jax.optim", "ssd_jax.train_loop", '
          '"ssd_jax.train_step", "ssd_jax.data.input_pipeline")))')
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.strip() == '[]'


def test_a_config_file_that_does_not_exist_is_one_line_naming_the_configs_there(tmp_path):
  run = run_main('--config=configs/voc301.py', f'--workdir={tmp_path / "run"}')
  assert run.returncode == 2 and 'Traceback' not in run.stderr
  names = sorted(n for n in os.listdir(os.path.join(ROOT, 'configs')) if n.endswith('.py'))
  assert run.stderr.splitlines()[0] == (
      f'main.py: --config=configs/voc301.py: no such file; configs holds {", ".join(names)}.')
  assert not (tmp_path / 'run').exists()


def test_overrides_without_a_config_file_name_the_fix(tmp_path):
  run = run_main('--mode=eval', f'--workdir={tmp_path}', '--config.data.eval_split=voc/2007:val')
  assert run.returncode == 2 and 'Traceback' not in run.stderr
  assert run.stderr.splitlines()[0] == (
      'main.py: --config.data.eval_split overrides a field of a --config file, and none is '
      'given: add --config=<file> (for eval and predict, the file the run was trained with, '
      'and the overrides it was trained with).')
