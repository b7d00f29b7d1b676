"""One process of the multi-process test: `python distributed_worker.py OUT PORT ID COUNT`.

COUNT processes with 4 // COUNT CPU devices each take one train step on the same
global batch (compiled first, then started together); process 0 saves the
parameters to OUT (.npz).
"""
import os
import sys

from ssd_jax.testing import commands

out, port, process_id, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={4 // count} '
                           f'{commands.QUICK_COMPILE}')
os.environ['JAX_PLATFORMS'] = 'cpu'

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ssd_jax import config_lib, sharding, train_step  # noqa: E402
from ssd_jax.testing import synthetic  # noqa: E402
from ssd_jax.task import Task  # noqa: E402

if count > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=count,
                             process_id=process_id)
assert jax.device_count() == 4, jax.devices()
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
config = synthetic.tiny_config(config_lib.load(os.path.join(root, 'configs', 'voc300.py')))
config.optim.learning_rate = 0.05
mesh, task = sharding.make_mesh(), Task.of(config)
state = train_step.create_state(task, mesh, jax.random.key(0))
anchors = jnp.asarray(task.default_boxes)
full = synthetic.synthetic_batch(np.random.default_rng(0), 8)
share = 8 // count
local = {k: v[process_id * share:(process_id + 1) * share] for k, v in full.items()}
batch = sharding.global_batch(local, mesh)
step = train_step.jit_train_step(task, mesh).lower(state, batch, anchors).compile()
if count > 1:
  # Gloo sets up its context at the first collective and gives the other process
  # 30 s to arrive; compiling on two loaded cores can differ by more. So both
  # compile first and meet at the coordination service's barrier (no collective).
  from jax._src import distributed  # noqa: E402
  distributed.global_state.client.wait_at_barrier('compiled', 600_000)
state, metrics = step(state, batch, anchors)
# Replicated: every process holds the whole value in its first local shard.
params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
if process_id == 0:
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  np.savez(out, loss=np.asarray(metrics['loss'].addressable_data(0)), **flat)
