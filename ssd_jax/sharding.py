"""Data parallelism: the device mesh, batch checks, host batches -> global arrays.

Every jitted step (training, evaluation) runs over one 1-D `Mesh` of all devices
of all hosts, with the batch split over its 'data' axis and everything else
replicated. The compiler inserts the collectives; there is no pmap and no axis
name in the step functions.
"""
from __future__ import annotations

import math
import pickle
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, default boxes, results)."""
  return NamedSharding(mesh, P())


def placed(shapes, where: NamedSharding):
  """A tree of arrays or jax.ShapeDtypeStruct -> jax.ShapeDtypeStruct of the same
  shapes and dtypes placed by `where` (a target to restore a checkpoint into)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), shapes)


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Axis 0 split over the mesh's data axis (batches)."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch(global_batch: int, num_devices: Optional[int] = None,
                num_hosts: int = 1) -> int:
  """The per-host share of `global_batch`, or an error naming devices and hosts.

  The global batch must split evenly over the hosts (each feeds its own share)
  and over the devices (each computes an equal slice). `num_devices=None`
  checks the hosts only (an input pipeline on its own).
  """
  devices = num_devices or num_hosts
  multiple = math.lcm(devices, num_hosts)
  if global_batch < 1 or global_batch % multiple:
    unit = (f'{num_hosts} hosts' if global_batch % num_hosts
            else f'{devices} devices')
    where = (f' ({num_devices} devices on {num_hosts} host{"s" * (num_hosts > 1)})'
             if num_devices else '')
    example = multiple * max(1, round(global_batch / multiple))
    raise ValueError(f'train.batch_size={global_batch} does not divide over {unit}{where}; '
                     f'use a multiple of {multiple}, e.g. {example}.')
  return global_batch // num_hosts


def check_mesh_batch(global_batch: int, mesh: Mesh) -> int:
  """`check_batch` for the devices of `mesh` and this run's hosts."""
  return check_batch(global_batch, mesh.devices.size, jax.process_count())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's part of the batch (NumPy) -> global arrays sharded over 'data'."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


def host_rows(num_rows: int) -> slice:
  """This host's rows of a global batch of `num_rows` built by `global_batch`
  (hosts hold consecutive equal slices, in process order)."""
  share = num_rows // jax.process_count()
  return slice(jax.process_index() * share, (jax.process_index() + 1) * share)


def local_copy(tree):
  """A replicated tree (every device of every host holds the whole value) as this
  host's NumPy copy, for work one host does alone (drawing, exporting)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                      else x, tree)


def gather_objects(obj) -> list:
  """Every host's `obj` (any picklable value), in process order, on every host."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size]))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [pickle.loads(gathered[p, :n].tobytes()) for p, n in enumerate(sizes)]
