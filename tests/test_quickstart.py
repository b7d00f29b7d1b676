"""The quickstart's design (configs/shapes.py): its default boxes reach every
object size the shapes dataset draws, and a briefly trained model of its size
finds large shapes as well as small ones."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ssd_jax import box_utils, builders, detector, sharding, train_step
from ssd_jax.data import shapes_dataset
from ssd_jax.task import Task

SIZE_BINS = ((0.1, 0.25), (0.25, 0.45), (0.45, 0.8))  # object side (sqrt of area), image sides


def shapes_examples(first_seed: int, n: int, image_size: int):
  """n (image u8 [S, S, 3], boxes f32[N, 4] normalised xyxy, labels 1..4) from the
  dataset's own generator, resized to the network input."""
  spec = shapes_dataset.ShapesConfig(name='test')
  out = []
  for seed in range(first_seed, first_seed + n):
    image, boxes, labels = shapes_dataset.generate(seed, spec)
    image = np.asarray(Image.fromarray(image).resize((image_size,) * 2, Image.BILINEAR))
    out.append((image, boxes, labels + 1))
  return out


def side(boxes: np.ndarray) -> np.ndarray:
  """f[N] square root of the area of f[N, 4] xyxy boxes."""
  return np.sqrt(box_utils.area(boxes))


def test_every_object_size_has_a_default_box_at_the_matching_threshold(load_config):
  config = load_config('shapes')
  anchors = box_utils.cxcywh_to_xyxy(builders.build_default_boxes(config))
  boxes = np.concatenate([b for _, b, _ in shapes_examples(0, 600, 8)])
  best = box_utils.pairwise_iou(boxes, anchors).max(1)
  for lo, hi in SIZE_BINS:
    inside = (side(boxes) >= lo) & (side(boxes) < hi)
    assert inside.sum() > 50
    reached = np.mean(best[inside] >= config.matching.iou_threshold)
    assert reached >= 0.97, (lo, hi, reached)


def recall_by_size(found, examples, min_score: float) -> list[float]:
  """Share of the objects in each SIZE_BINS bin that a detection of the right class
  and score >= min_score covers at IoU >= 0.5."""
  hits, sides = [], []
  for dets, (image, boxes, labels) in zip(found, examples):
    s = image.shape[0]
    keep = dets['scores'] >= min_score
    iou = box_utils.pairwise_iou(boxes * s, dets['boxes'][keep])
    same = labels[:, None] == dets['classes'][keep][None]
    hits.extend(np.any((iou >= 0.5) & same, axis=1))
    sides.extend(side(boxes))
  hits, sides = np.asarray(hits), np.asarray(sides)
  return [float(hits[(sides >= lo) & (sides < hi)].mean()) for lo, hi in SIZE_BINS]


@pytest.mark.xdist_group('hosts')  # the heaviest test: never beside several JAX processes
def test_a_briefly_trained_quickstart_model_finds_large_and_small_shapes(load_config,
                                                                        full_optimisation,
                                                                        cpu_path):
  """The quickstart's model, trained from scratch on the dataset's generator
  (no augmentation, one device) for a quarter of its steps, recalls large
  shapes as well as small ones on unseen images (with SSD300's layout scaled
  down, as before, it found 73% of the small and none of the large)."""
  # cpu_path: the program the quickstart runs on its one CPU device (its steps
  # take 0.38 CPU-seconds here instead of 0.54 with XLA's pooling gradient).
  config, steps = load_config('shapes'), 300
  config.optim.boundaries = (steps,)
  size, batch = config.model.image_size, config.train.batch_size
  train = shapes_examples(10_000, 512, size)
  mesh, task = sharding.make_mesh(jax.devices()[:1]), Task.of(config)
  state = train_step.create_state(task, mesh, jax.random.key(0))
  step = train_step.jit_train_step(task, mesh)
  anchors = jnp.asarray(task.default_boxes)
  rng = np.random.default_rng(0)
  m = config.data.max_boxes
  for _ in range(steps):
    pick = [train[i] for i in rng.choice(len(train), batch, replace=False)]
    boxes = np.zeros((batch, m, 4), np.float32)
    labels = np.zeros((batch, m), np.int32)
    for i, (_, b, l) in enumerate(pick):
      boxes[i, :len(b)], labels[i, :len(l)] = b[:m], l[:m]
    batch_arrays = {'image': np.stack([p[0] for p in pick]), 'boxes': boxes, 'labels': labels}
    state, _ = step(state, sharding.global_batch(batch_arrays, mesh), anchors)
  det = detector.Detector(task, jax.device_get(state.params))
  test = shapes_examples(20_000, 96, size)
  recall = recall_by_size(det.detect([t[0] for t in test]), test, config.eval.draw_score)
  print('recall small / medium / large:', np.round(recall, 3))
  assert min(recall) >= 0.7, recall
  assert recall[2] >= recall[0] - 0.1, recall  # large found as well as small
