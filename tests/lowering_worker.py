"""`python lowering_worker.py PLATFORM...`: lowers the train step (on the input
pipeline's batch layout) and the Detector of SSD300 and SSDLite320 for each
PLATFORM (cuda, tpu) in a process where TensorFlow cannot be imported, as on a
GPU machine without it; prints one JSON line per model.
"""
import json
import os
import re
import sys

from ssd_jax.testing import without_tensorflow

without_tensorflow.block()
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ssd_jax import builders, config_lib, detector, sharding, train_step  # noqa: E402
from ssd_jax.testing import step_inputs  # noqa: E402
from ssd_jax.task import Task  # noqa: E402

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for name in ('voc300', 'coco_ssdlite320'):
  task = Task.of(config_lib.load(os.path.join(root, 'configs', f'{name}.py')))
  config, mesh = task.config, sharding.make_mesh()
  state = train_step.abstract_state(task, mesh)
  anchors = jax.ShapeDtypeStruct(task.default_boxes.shape, jnp.float32)
  step = train_step.jit_train_step(task, mesh).trace(
      state, step_inputs.batch_spec(config, 8), anchors)
  det = detector.Detector(task, None)
  size = config.model.image_size
  variables = jax.eval_shape(lambda: builders.inference_variables(
      builders.init_variables(config, jax.random.key(0))))
  run = det._run.trace(variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.uint8))
  result = {'model': name, 'tensorflow_loaded': without_tensorflow.imported()}
  for platform in sys.argv[1:]:
    for what, traced in (('train_step', step), ('detector', run)):
      text = traced.lower(lowering_platforms=(platform,)).as_text()
      groups = [int(g) for g in re.findall(r'feature_group_count = (\d+)', text)]
      result[f'{what}_{platform}'] = {'convolutions': text.count('stablehlo.convolution'),
                                      'largest_group_count': max(groups, default=1)}
  print(json.dumps(result), flush=True)
