"""The command line: training, evaluation and prediction.

  python -m ssd_jax.main --config=configs/voc300.py --workdir=/tmp/voc300
  python -m ssd_jax.main --mode=eval --workdir=/tmp/voc300
  python -m ssd_jax.main --mode=predict --workdir=/tmp/voc300 --input='photos/*.jpg' --output=/tmp/voc300_predictions

Modes:
  train           train (resuming from the workdir's latest checkpoint)
  train_and_eval  train, evaluate every eval.every_steps and at the end, then draw
                  detections on eval.num_rendered eval images into DIR/detections
  eval            evaluate the latest (or --step) checkpoint: a per-class table,
                  DIR/eval_<step>/metrics.json and pr_curves.png; DIR may also be
                  a folder python -m ssd_jax.export wrote (its artifact is
                  evaluated, the report going to DIR/eval)
  predict         detect on --input (an image, a folder or a glob): COCO results
                  JSON and drawn images in --output (default DIR/predictions); with
                  --pretrained=NAME instead of --workdir, published weights
                  (default output ./predictions)

Fields of the config can be overridden, e.g. --config.train.batch_size=64, and
optional ones unset, e.g. --config.optim.grad_clip_norm=None (overrides need
--config). For eval and predict, --config defaults to the config.json that
training saved.

Exit status: 0 done; 1 an error (its message says what to fix; an expected one,
see expected_errors, is printed alone, with its traceback under --verbose); 2 a
bad command line; 75 (EX_TEMPFAIL) preempted by SIGTERM after saving a
checkpoint: run the same command again to resume.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from ssd_jax import startup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, summaries, results.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'train_and_eval', 'eval', 'predict'],
                          'What to run; see the module docstring.')
_STEP = flags.DEFINE_integer('step', None, 'eval/predict: checkpoint step (default latest).')
_INPUT = flags.DEFINE_string('input', None, 'predict: an image file, a folder or a glob.')
_OUTPUT = flags.DEFINE_string('output', None, 'predict: output folder.')
_PRETRAINED = flags.DEFINE_string(
    'pretrained', None, 'predict: published weights by name instead of --workdir (python -m '
    'ssd_jax.pretrained lists them), downloaded and converted once into $SSD_JAX_CACHE.')
_VERBOSE = flags.DEFINE_bool('verbose', False, "Show the traceback of an expected error and "
                              "the libraries' info lines (Orbax's, TFDS's) too.")
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = os.EX_TEMPFAIL  # 75: try again (resume) later


def expected_errors() -> tuple:
  """Exceptions that end the command with their message alone: what a user can fix
  (missing or unprepared data, unreadable annotations, a bad config value, a
  workdir in use, a bad checkpoint, a diverged loss). Add new kinds here."""
  from ssd_jax import checkpoints, cluster, workdirs
  from ssd_jax.data import tfds_data
  return (OSError, ValueError, FloatingPointError, workdirs.WorkdirInUseError,
          checkpoints.NoReadableCheckpointError, cluster.HostFailed,
          tfds_data.PreparationFailed)


def _config(workdir):
  from ssd_jax import workdirs
  return _CONFIG.value if _CONFIG.value is not None else workdirs.find_config(workdir)


def _print_evaluation(out: dict) -> None:
  from ssd_jax import evaluate
  print(f'evaluation at step {out["step"]}:\n{evaluate.table(out["result"])}\n'
        f'metrics: {os.path.join(out["eval_dir"], "metrics.json")}\n'
        f'precision-recall plots: {out["eval_dir"]}', flush=True)


def main(argv):
  """Runs the mode; an expected error (see expected_errors) exits 1 with its message."""
  startup.quiet_libraries(_VERBOSE.value)
  try:
    _main(argv)
  except expected_errors() as e:
    if _VERBOSE.value:
      raise
    print(f'{os.path.basename(sys.argv[0])}: error: {e}\n(--verbose shows where it was '
          f'raised)', file=sys.stderr, flush=True)
    sys.exit(EXIT_ERROR)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _MODE.value != 'predict':  # the data pipelines' TensorFlow (prediction uses none)
    import tensorflow as tf  # kept off the accelerators: they are JAX's
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  from ssd_jax import workflows
  startup.done()
  workdir, mode = _WORKDIR.value, _MODE.value
  if _PRETRAINED.value and (mode != 'predict' or workdir):
    raise app.UsageError('--pretrained=NAME is for --mode=predict, without --workdir; to '
                         'train from published weights set --config.model.init_from=NAME.')
  if not workdir and not _PRETRAINED.value:
    raise app.UsageError('--workdir is required (or, for --mode=predict, --pretrained=NAME).')
  if mode in ('train', 'train_and_eval'):
    if _CONFIG.value is None:
      raise app.UsageError(f'--mode={mode} needs --config=configs/<name>.py.')
    from ssd_jax import train_loop
    try:
      out = workflows.run_training(_CONFIG.value, workdir, with_eval=mode == 'train_and_eval')
    except train_loop.Preempted as e:
      print(e, flush=True)
      sys.exit(EXIT_PREEMPTED)
    if 'result' in out:
      _print_evaluation(out)
      print(f'detections drawn on eval images: {out["pictures"]}', flush=True)
  elif mode == 'eval':
    _print_evaluation(workflows.run_evaluation(_config(workdir), workdir, _STEP.value))
  else:
    if not _INPUT.value:
      raise app.UsageError('--mode=predict needs --input=<image, folder or glob>.')
    output = _OUTPUT.value
    if _PRETRAINED.value:
      from ssd_jax import pretrained
      workdir, output = pretrained.converted(_PRETRAINED.value), output or 'predictions'
    out = workflows.run_prediction(_config(workdir), workdir, _INPUT.value, output,
                                   _STEP.value)
    skipped = f'; skipped {len(out["skipped"])} unreadable' if out['skipped'] else ''
    print(f'{out["count"]} images: detections in {out["detections"]}, pictures in '
          f'{out["images"]}{skipped}', flush=True)


def _check_config_file() -> None:
  """flags.Error in one line when --config names no file (ml_collections would
  only fail on first use, with a multi-line message)."""
  if not flags.FLAGS['config'].present:
    return  # eval and predict read the workdir's config.json
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  if os.path.isfile(path):
    return
  folder = os.path.dirname(path)
  configs = (sorted(n for n in os.listdir(folder) if n.endswith('.py'))
             if folder and os.path.isdir(folder) else [])
  where = (f'{folder} holds {", ".join(configs)}' if configs
           else 'give a config file, e.g. --config=configs/voc300.py')
  raise flags.Error(f'--config={path}: no such file; {where}.')


def _check_overrides_have_a_config(argv) -> None:
  """flags.Error naming the fix when --config.<field> overrides come without
  --config (absl would call them unknown flags)."""
  given = any(a == '--config' or a.startswith('--config=') for a in argv[1:])
  override = next((a.split('=')[0] for a in argv[1:] if a.startswith('--config.')), None)
  if override and not given:
    raise flags.Error(f'{override} overrides a field of a --config file, and none is given: '
                      f'add --config=<file> (for eval and predict, the file the run was '
                      f'trained with, and the overrides it was trained with).')


def parse_flags(argv):
  """absl's flag parsing, with a one-line error (not three chained tracebacks) when
  a --config.* override names no field or holds a bad value; --config.<field>=None
  unsets an optional field (one whose default is None)."""
  from ssd_jax import config_lib
  program = os.path.basename(argv[0])
  try:
    _check_overrides_have_a_config(argv)  # unsets (--config.<field>=None) included
    argv, unset = config_lib.split_unsets(argv)
    rest = flags.FLAGS(argv)
    _check_config_file()
    if unset:
      config_lib.unset_fields(_CONFIG.value, unset)
    return rest
  except flags.Error as e:
    print(f'{program}: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    chain = [e]
    while chain[-1].__context__ is not None:
      chain.append(chain[-1].__context__)
    texts = [x.args[0] if x.args and isinstance(x.args[0], str) else str(x) for x in chain]
    message = next((t for t in reversed(texts) if 'Did you mean' in t), texts[0])
    print(f'{program}: a --config override failed: {" ".join(message.split())}',
          file=sys.stderr)
    sys.exit(EXIT_USAGE)


if __name__ == '__main__':
  startup.begin()  # the workflows' imports come in _main
  app.run(main, flags_parser=parse_flags)
