"""configs/ablations/: one config per row of the paper's Tables 2 and 3 that differs
from SSD300. Each builds, carries its run command and the paper's mAP, and has the
default boxes its sources and aspect ratios imply."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

from ssd_jax import anchors, builders, config_lib

ABLATIONS = pathlib.Path(__file__).resolve().parent.parent / 'configs' / 'ablations'
# The paper's VOC07 test mAP of each row (Tables 2 and 3, SSD300, 07+12 training).
PAPER = {'table2_no_augmentation': 65.5, 'table2_no_extra_ratios': 71.6,
         'table2_no_ratio_3': 73.7, 'table2_no_atrous': 74.2,
         'table3_five_sources': 74.6, 'table3_four_sources': 73.8,
         'table3_three_sources': 70.7, 'table3_two_sources': 64.2, 'table3_conv7_only': 62.4}
# Source map sides at 300x300: with the atrous conv6 (pool5 3x3/1) and without
# it (pool5 2x2/2 halves everything after conv5_3).
MAPS = {True: {'conv4_3': 38, 'conv7': 19, 'conv8_2': 10, 'conv9_2': 5, 'conv10_2': 3,
               'conv11_2': 1},
        False: {'conv4_3': 38, 'conv5_3': 19, 'conv7': 10, 'conv8_2': 5, 'conv9_2': 3,
                'conv10_2': 1}}


def load(name):
  spec = importlib.util.spec_from_file_location(name, ABLATIONS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_row_has_a_config():
  assert sorted(p.stem for p in ABLATIONS.glob('table*.py')) == sorted(PAPER)


@pytest.mark.parametrize('name', sorted(PAPER))
def test_ablation_builds_with_the_boxes_its_config_implies(name):
  module = load(name)
  assert module.PAPER_MAP == PAPER[name]
  assert f'--config=configs/ablations/{name}.py' in module.__doc__
  assert f'mAP {PAPER[name]}' in module.__doc__
  config = config_lib.validate(module.get_config())
  maps = MAPS[config.backbone.atrous]
  with_max = config.anchors.min_sizes is None or config.anchors.max_sizes is not None
  implied = sum(maps[s] ** 2 * anchors.boxes_per_location(r, with_max)
                for s, r in zip(config.model.sources, config.anchors.aspect_ratios))
  model = builders.build_model(config)
  images = jax.ShapeDtypeStruct((1, 300, 300, 3), jnp.float32)
  (loc, logits), _ = jax.eval_shape(model.init_with_output, jax.random.key(0), images)
  assert loc.shape[1] == logits.shape[1] == len(builders.build_default_boxes(config)) == implied
  if name.startswith('table3'):
    base = config_lib.validate(config_lib.load(str(ABLATIONS.parent / 'voc300.py')))
    assert set(config.model.sources) < set(base.model.sources)
