"""A detector for notebooks and scripts: a trained SSD on NumPy images.

  det = Detector.from_checkpoint('/tmp/shapes')   # a workdir, checkpoints/ or a step folder
  found = det.detect([image])                     # uint8 [H, W, 3] RGB NumPy images
  found[0]['boxes'], found[0]['names']            # pixels xyxy, class names
  det = Detector.from_exported('/tmp/shapes_jax') # or an `ssd_jax.export --format=jax` folder

Images of any size are resized to the network input as in evaluation;
detections come back in each image's own pixels. Nothing here imports
TensorFlow: the resize is JAX's (`images.read_image` reads files with PIL).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import artifacts, builders, checkpoints, postprocess, sharding, workdirs, xla_cpu
from ssd_jax.task import Task


@functools.partial(jax.jit, static_argnums=1)
def resize_images(images, size: int):
  """u8/f32[..., H, W, 3] RGB pixels -> f32[..., S, S, 3] pixels.

  Bilinear with half-pixel centres and no antialiasing, as evaluation's
  tf.image.resize and torchvision's interpolate do. Compiled once per shape.
  """
  shape = images.shape[:-3] + (size, size, 3)
  return jax.image.resize(images.astype(jnp.float32), shape, 'linear', antialias=False)


def resize_to_uint8(images, size: int) -> np.ndarray:
  """u8[..., H, W, 3] -> u8[..., S, S, 3]: resize_images rounded to whole pixel
  values, what a full-int8 TFLite artifact takes."""
  return np.clip(np.round(np.asarray(resize_images(images, size))), 0, 255).astype(np.uint8)


class Detector:
  """A trained SSD: its variables, default boxes and post-processing, jitted.

  `task`: an ssd_jax.task.Task, or a config (its Task is made here).
  `variables`: a train state, restored variables or bare parameters (see
  builders.inference_variables; the weights' moving average when there is one),
  on this host or replicated over several: the Detector runs on this host's
  default device, with its own copy.
  """

  def __init__(self, task, variables, batch_size: int = 8):
    self.task = task if isinstance(task, Task) else Task.of(task)
    self.config, self.class_names = self.task.config, self.task.class_names
    self.category_ids = self.task.category_ids  # of each class in COCO-format results
    self.variables = jax.device_put(sharding.local_copy(builders.inference_variables(variables)))
    self.batch_size = batch_size
    self._run = xla_cpu.jit(functools.partial(
        postprocess.network_detections, model=self.task.model,
        anchors=jnp.asarray(self.task.default_boxes), config=self.config), self.config)

  @property
  def params(self):
    """The parameters inference applies (the moving average when there is one)."""
    return None if self.variables is None else self.variables['params']

  @classmethod
  def from_checkpoint(cls, path: str, config=None, step: Optional[int] = None,
                      **kwargs) -> 'Detector':
    """Restores parameters from a workdir, its checkpoints folder or a step folder;
    the config defaults to the config.json training saved in the workdir."""
    task = Task.of(config if config is not None else workdirs.find_config(path))
    variables, _ = checkpoints.restore_variables(task, path, step)
    return cls(task, variables, **kwargs)

  @classmethod
  def from_pretrained(cls, name: str, **kwargs) -> 'Detector':
    """Published weights by name (ssd_jax.pretrained.PUBLISHED: 'ssd300_vgg16_coco',
    'ssdlite320_mobilenet_v3_large_coco'), downloaded and converted on first use
    into the cache folder and read from there afterwards (offline too)."""
    from ssd_jax import pretrained
    return cls.from_checkpoint(pretrained.converted(name), **kwargs)

  @staticmethod
  def preprocess_check(image: np.ndarray) -> None:
    """Raises ValueError unless the image is [H, W, 3]."""
    shape = np.shape(image)
    if len(shape) != 3 or shape[-1] != 3 or min(shape[:2]) < 1:
      raise ValueError(f'images must be [H, W, 3] RGB arrays; got shape {shape}. '
                       f'Convert grayscale or RGBA first, e.g. PIL .convert("RGB").')

  def preprocess(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> f32 [S, S, 3] pixels at the network's input size."""
    self.preprocess_check(image)
    return np.asarray(resize_images(np.asarray(image), self.config.model.image_size))

  @classmethod
  def from_exported(cls, path: str, batch_size: int = 8) -> 'ArtifactDetector':
    """The detector `python -m ssd_jax.export` wrote to the folder `path` (its
    artifact, config.json, export.json), in any format; the same `detect`, no
    checkpoint. Only --format=jax runs without TensorFlow (ONNX: onnxruntime)."""
    return ArtifactDetector(path, batch_size)

  def pixel_detections(self, images: Sequence[np.ndarray], size: int) -> list[tuple]:
    """Detections of up to `size` images, one (boxes f32[D, 4] pixels xyxy, scores
    f32[D], classes i32[D], valid bool[D]) per image, best first. They run as one
    batch padded to `size`: one compilation per size."""
    batch = np.zeros((size,) + (self.config.model.image_size,) * 2 + (3,), np.float32)
    batch[:len(images)] = [self.preprocess(im) for im in images]
    dets = jax.device_get(self._run(self.variables, batch))
    out = []
    for i, image in enumerate(images):
      h, w = np.asarray(image).shape[:2]
      out.append((dets.boxes[i] * np.array([w, h, w, h], np.float32), dets.scores[i],
                  dets.classes[i], dets.valid[i]))
    return out

  def detect(self, images: Sequence[np.ndarray], min_score: float = 0.0) -> list[dict]:
    """Detections of each image, best first.

    Returns:
      one dict per image: boxes f32[N, 4] pixels xyxy, scores f32[N], classes
      i32[N] (model classes, 1..C-1), names (class names); only scores >= min_score.
    """
    results = []
    size = min(self.batch_size, len(images))
    for start in range(0, len(images), size):
      for boxes, scores, classes, valid in self.pixel_detections(images[start:start + size],
                                                                 size):
        keep = valid & (scores >= min_score)
        results.append({'boxes': boxes[keep], 'scores': scores[keep], 'classes': classes[keep],
                        'names': [self.class_names[c - 1] for c in classes[keep]]})
    return results


class ArtifactDetector(Detector):
  """A Detector whose network, resize and post-processing are an exported artifact
  (ssd_jax/export.py; parameters inside it), run by its format's runtime
  (ssd_jax/artifacts.py): the config and class names are the ones exported."""

  def __init__(self, path: str, batch_size: int = 8):
    info_file = os.path.join(path, artifacts.INFO_FILE)
    if not os.path.isfile(info_file):
      raise FileNotFoundError(f'{path} has no {artifacts.INFO_FILE}; give a folder written by '
                              f'python -m ssd_jax.export --output=FOLDER.')
    with open(info_file) as f:
      self.info = json.load(f)
    runtime = artifacts.FORMATS[self.info['format']]
    file = os.path.join(path, runtime.FILE)
    if not os.path.isfile(file):
      raise FileNotFoundError(f'{path} has no {runtime.FILE}; give a folder written by '
                              f'python -m ssd_jax.export --format={runtime.FORMAT} '
                              f'--output=FOLDER.')
    self.task = Task.of(workdirs.read_config(os.path.join(path, workdirs.CONFIG_FILE)))
    self.config, self.category_ids = self.task.config, self.task.category_ids
    self.class_names = tuple(self.info['class_names'])
    self.variables = None
    self.batch_size = batch_size
    self.run = runtime(file, self.info, self.config)

  @property
  def fixed_size(self) -> Optional[int]:
    """The side S of the artifact's u8[1, S, S, 3] input, or None (any size)."""
    return self.info.get('input_size')

  def pixel_detections(self, images: Sequence[np.ndarray], size: int = 1) -> list[tuple]:
    """As Detector's, but each image goes alone through the artifact, whole (or
    resized as Detector.preprocess resizes and rounded to uint8, when the
    artifact takes a fixed size): one compilation per image size."""
    out = []
    for image in images:
      self.preprocess_check(image)
      image = np.asarray(image, np.uint8)
      scale = np.ones(4, np.float32)
      if self.fixed_size:
        (h, w), s = image.shape[:2], self.fixed_size
        image, scale = resize_to_uint8(image, s), np.array([w, h, w, h]) / s
      found = self.run(image[None])
      valid = np.arange(found['scores'].shape[1]) < found['num_detections'][0]
      out.append((found['boxes'][0] * scale.astype(np.float32), found['scores'][0],
                  found['classes'][0], valid))
    return out
