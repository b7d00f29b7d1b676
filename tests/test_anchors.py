"""Default boxes against a plain loop written from the paper's rule, and by hand."""
import itertools
import math

import numpy as np
import pytest

from ssd_jax import anchors, box_utils, builders, config_lib


def reference_boxes(image_size, fmaps, steps, min_sizes, max_sizes, ratios):
  """The rule, literally: per layer, row i, column j, then the boxes of a cell."""
  out = []
  for k, f in enumerate(fmaps):
    for i, j in itertools.product(range(f), repeat=2):
      cx, cy = (j + 0.5) * steps[k] / image_size, (i + 0.5) * steps[k] / image_size
      s = min_sizes[k] / image_size
      out.append([cx, cy, s, s])
      if max_sizes is not None:
        sp = math.sqrt(min_sizes[k] * max_sizes[k]) / image_size
        out.append([cx, cy, sp, sp])
      for r in ratios[k]:
        out.append([cx, cy, s * math.sqrt(r), s / math.sqrt(r)])
        out.append([cx, cy, s / math.sqrt(r), s * math.sqrt(r)])
  return np.array(out)


@pytest.mark.parametrize('name,count', [('voc300', 8732), ('coco300', 8732),
                                        ('voc512', 24564), ('coco512', 24564)])
def test_recipe_configs_match_reference(load_config, name, count):
  c = load_config(name)
  fmaps = builders.source_feature_sizes(c)
  got = builders.build_default_boxes(c)
  want = reference_boxes(c.model.image_size, fmaps, c.anchors.steps, c.anchors.min_sizes,
                         c.anchors.max_sizes, c.anchors.aspect_ratios)
  assert got.shape == (count, 4) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_voc300_first_and_last_box_of_each_layer_by_hand(load_config):
  boxes = builders.build_default_boxes(load_config('voc300'))
  r2, r3 = math.sqrt(2), math.sqrt(3)
  # (fmap, k, step, min, max, last box's (w, h) = transposed largest ratio)
  layers = [(38, 4, 8, 30, 60, (30 / r2, 30 * r2)),
            (19, 6, 16, 60, 111, (60 / r3, 60 * r3)),
            (10, 6, 32, 111, 162, (111 / r3, 111 * r3)),
            (5, 6, 64, 162, 213, (162 / r3, 162 * r3)),
            (3, 4, 100, 213, 264, (213 / r2, 213 * r2)),
            (1, 4, 300, 264, 315, (264 / r2, 264 * r2))]
  start = 0
  for fmap, k, step, mn, _, (lw, lh) in layers:
    first, last = boxes[start], boxes[start + fmap * fmap * k - 1]
    c0, c1 = 0.5 * step / 300, (fmap - 0.5) * step / 300
    np.testing.assert_allclose(first, [c0, c0, mn / 300, mn / 300], rtol=1e-6)
    np.testing.assert_allclose(last, [c1, c1, lw / 300, lh / 300], rtol=1e-6)
    start += fmap * fmap * k
  assert start == len(boxes)
  # The second box of the first cell is the sqrt(s_k s_k+1) one: sqrt(30 * 60).
  np.testing.assert_allclose(boxes[1, 2:], [math.sqrt(1800) / 300] * 2, rtol=1e-6)


def test_paper_scale_rule():
  mins, maxs = anchors.sizes_from_scales(300, 6, 0.2, 0.9, first_scale=0.1)
  np.testing.assert_allclose(np.array(mins) / 300, [0.1, 0.2, 0.375, 0.55, 0.725, 0.9])
  np.testing.assert_allclose(np.array(maxs) / 300, [0.2, 0.375, 0.55, 0.725, 0.9, 1.075])
  mins, maxs = anchors.sizes_from_scales(100, 5, 0.2, 0.9, first_scale=None)
  np.testing.assert_allclose(mins, [20, 37.5, 55, 72.5, 90])
  np.testing.assert_allclose(maxs, [37.5, 55, 72.5, 90, 107.5])


def test_scale_rule_config_and_auto_steps(load_config):
  c = load_config('voc300')
  c.anchors.min_sizes = None
  c.anchors.max_sizes = None
  c.anchors.steps = None
  got = builders.build_default_boxes(c)
  fmaps = (38, 19, 10, 5, 3, 1)
  mins, maxs = anchors.sizes_from_scales(300, 6)
  want = reference_boxes(300, fmaps, [300 / f for f in fmaps], mins, maxs,
                         c.anchors.aspect_ratios)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_clip_modes(load_config):
  c = load_config('voc300')
  unclipped = builders.build_default_boxes(c)
  assert unclipped.max() > 1.0
  clipped = {}
  for mode in anchors.CLIP_MODES[1:]:
    c.anchors.clip = mode
    clipped[mode] = builders.build_default_boxes(c)
  np.testing.assert_array_equal(clipped['cxcywh'], np.clip(unclipped, 0, 1))
  np.testing.assert_array_equal(clipped['wh'][:, :2], unclipped[:, :2])
  np.testing.assert_array_equal(clipped['wh'][:, 2:], np.clip(unclipped[:, 2:], 0, 1))
  # A box at centre (0.9, 0.5), size (0.4, 1.2): corners (0.7, -0.1, 1.1, 1.1) -> (0.7, 0, 1, 1).
  box = np.array([[0.9, 0.5, 0.4, 1.2]])
  np.testing.assert_allclose(anchors.clip_boxes(box, 'xyxy'), [[0.85, 0.5, 0.3, 1.0]])
  corners = box_utils.cxcywh_to_xyxy(clipped['xyxy'])
  assert corners.min() >= 0 and corners.max() <= 1 + 1e-6
  with pytest.raises(ValueError, match='anchors.clip=.True. is not one of'):
    anchors.clip_boxes(unclipped, 'True')


def test_no_max_sizes_drops_the_extra_square_box():
  got = anchors.default_boxes(300, [2], [60], None, [[2]], [150])
  want = reference_boxes(300, [2], [150], [60], None, [[2]])
  assert got.shape == (2 * 2 * 3, 4)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_wrong_list_length_is_a_clear_error():
  with pytest.raises(ValueError, match='anchors.min_sizes has 2 entries'):
    anchors.default_boxes(300, [38, 19, 10], [30, 60], None, [[2]] * 3)


def test_empty_tuples_mean_unset_as_on_the_command_line(load_config):
  """--config.anchors.min_sizes='()' (or None, which becomes (None,)) selects the rule."""
  c = load_config('voc300')
  c.anchors.min_sizes = c.anchors.max_sizes = c.anchors.steps = None
  want = builders.build_default_boxes(c)
  c.anchors.min_sizes, c.anchors.max_sizes, c.anchors.steps = (), (None,), ()
  c = config_lib.validate(c)  # what every entry point does with command-line values
  np.testing.assert_array_equal(builders.build_default_boxes(c), want)
