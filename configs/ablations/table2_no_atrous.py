"""Paper Table 2: SSD300 without the atrous conv6 ("full VGG16").

The paper reports VOC07 test mAP 74.2 (SSD300 itself, configs/voc300.py: 74.3).
Run:

  python -m ssd_jax.main --config=configs/ablations/table2_no_atrous.py \
      --workdir=/tmp/table2_no_atrous --mode=train_and_eval

As the paper describes it: pool5 stays 2x2 stride 2, fc6 and fc7 keep 4096
channels (not subsampled), and conv5_3 becomes a source. The maps are then
38, 19, 10, 5, 3, 1 for conv4_3, conv5_3, conv7, conv8_2, conv9_2, conv10_2
(conv11_2 would need a 3x3 map), the same sizes as SSD300's sources, so the
default boxes are SSD300's. One knowing difference: conv6 here is a 3x3
convolution, where a converted fc6 would be 7x7.
"""
import os

from ssd_jax import config_lib

VOC300 = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'voc300.py')
PAPER_MAP = 74.2


def get_config():
  config = config_lib.load(VOC300)
  m = config.model
  config.backbone.atrous, config.backbone.fc_features = False, 4096
  m.sources = ('conv4_3', 'conv5_3', 'conv7', 'conv8_2', 'conv9_2', 'conv10_2')
  config.anchors.steps = None  # each source's stride: 300 / its map
  return config
