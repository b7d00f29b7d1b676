"""Paper Table 3: SSD300 predicting from conv7 alone.

The paper reports VOC07 test mAP 62.4 (SSD300 itself, configs/voc300.py: 74.3).
Run:

  python -m ssd_jax.main --config=configs/ablations/table3_conv7_only.py \
      --workdir=/tmp/table3_conv7_only --mode=train_and_eval

Layers after the last source are not built. Default-box sizes follow the
paper's scale rule over the kept sources (0.2 to 0.9; conv4_3 at 0.1); each
source keeps SSD300's steps and aspect ratios (19^2*6
= 2166 default boxes). The paper kept about 8732 boxes (8664 in this row of its table) by
stacking more scales on the remaining layers, which it does not list; ssd_jax
gives each source one scale, so this row has fewer boxes than the paper's.
"""
import os

from ssd_jax import config_lib, recipes

VOC300 = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'voc300.py')
PAPER_MAP = 62.4


def get_config():
  config = config_lib.load(VOC300)
  return recipes.with_sources(config, ('conv7',))
