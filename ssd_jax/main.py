"""Command line: python -m ssd_jax.main --config=configs/voc300.py --workdir=DIR.

Fields of the config can be overridden, e.g. --config.train.batch_size=64.
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints and summaries.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train'],
                          'train (evaluation and prediction modes come with their issue).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import tensorflow as tf  # keep TensorFlow (data only) off the accelerators
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  from ssd_jax import loop
  logging.info('config:\n%s', _CONFIG.value)
  loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
