"""Paper Table 2: SSD300 without the {1/2, 2} and {1/3, 3} boxes.

The paper reports VOC07 test mAP 71.6 (SSD300 itself, configs/voc300.py: 74.3).
Run:

  python -m ssd_jax.main --config=configs/ablations/table2_no_extra_ratios.py \
      --workdir=/tmp/table2_no_extra_ratios --mode=train_and_eval

Two default boxes per location, both square (sizes s_k and sqrt(s_k s_k+1)):
38^2*2 + (19^2 + 10^2 + 5^2 + 3^2 + 1) * 2 = 3880 default boxes.
"""
import os

from ssd_jax import config_lib

VOC300 = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'voc300.py')
PAPER_MAP = 71.6


def get_config():
  config = config_lib.load(VOC300)
  config.anchors.aspect_ratios = ((),) * 6
  return config
