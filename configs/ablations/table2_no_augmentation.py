"""Paper Table 2: SSD300 without data augmentation.

The paper reports VOC07 test mAP 65.5 (SSD300 itself, configs/voc300.py: 74.3).
Run:

  python -m ssd_jax.main --config=configs/ablations/table2_no_augmentation.py \
      --workdir=/tmp/table2_no_augmentation --mode=train_and_eval

Every image is only resized to 300x300: no photometric distortion, zoom-out,
crop or mirror (augment.enabled=False). Everything else is configs/voc300.py.
"""
import os

from ssd_jax import config_lib

VOC300 = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'voc300.py')
PAPER_MAP = 65.5


def get_config():
  config = config_lib.load(VOC300)
  config.augment.enabled = False
  return config
