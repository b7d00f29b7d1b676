"""Paper Table 2: SSD300 without the {1/3, 3} boxes.

The paper reports VOC07 test mAP 73.7 (SSD300 itself, configs/voc300.py: 74.3).
Run:

  python -m ssd_jax.main --config=configs/ablations/table2_no_ratio_3.py \
      --workdir=/tmp/table2_no_ratio_3 --mode=train_and_eval

Four default boxes per location (two squares, 2:1 and 1:2) on every source:
(38^2 + 19^2 + 10^2 + 5^2 + 3^2 + 1) * 4 = 7760 default boxes.
"""
import os

from ssd_jax import config_lib

VOC300 = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'voc300.py')
PAPER_MAP = 73.7


def get_config():
  config = config_lib.load(VOC300)
  config.anchors.aspect_ratios = ((2,),) * 6
  return config
