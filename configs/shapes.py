"""A small SSD on the built-in synthetic `ssd_shapes` dataset: the offline quickstart.

Run (generates the data, trains, evaluates, draws detections; under 10 minutes
on a 2-core CPU):
  python -m ssd_jax.main --config=configs/shapes.py --workdir=/tmp/ssd_shapes --mode=train_and_eval

The dataset (ssd_jax/shapes_dataset.py, 4000 train / 500 test images of
128x128) is generated on first use, in about 25 s, into the TFDS data_dir. The
model is SSD300's layout at an eighth of the width, on 96x96 inputs, with four
sources (conv4_3, conv7, conv8_2, conv9_2) and 862 default boxes. Trained from
scratch, so Adam rather than the paper's SGD (which needs the ImageNet base);
no zoom-out, as the objects already span small to large.
"""
from ssd_jax import config_lib, labels


def get_config():
  config = config_lib.preset('ssd300', 'voc')
  m, a, d = config.model, config.anchors, config.data
  m.image_size, m.width = 96, 0.125
  m.num_classes = len(labels.SHAPES_NAMES) + 1
  m.sources = ('conv4_3', 'conv7', 'conv8_2', 'conv9_2')
  a.steps = (8, 16, 32, 48)
  a.min_sizes = (13, 24, 40, 62)
  a.max_sizes = (24, 40, 62, 86)
  a.aspect_ratios = ((2,), (2, 3), (2, 3), (2,))
  d.name, d.max_boxes = 'ssd_shapes', 8
  d.train_splits, d.eval_split = ('ssd_shapes:train',), 'ssd_shapes:test'
  config.augment.zoom_out = False
  o = config.optim
  o.name, o.learning_rate, o.weight_decay = 'adam', 2e-3, 1e-5
  o.warmup_steps, o.boundaries, o.grad_clip_norm = 100, (1000, 1300), 10.0
  t = config.train
  t.batch_size, t.num_steps, t.log_every, t.checkpoint_every = 32, 1500, 100, 500
  config.eval.metric = 'voc07'  # the paper's VOC2007 11-point AP, the stricter here
  return config
