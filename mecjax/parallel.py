"""Devices, processes and shardings: data parallel over every device of every process.

One Mesh with a single ``data`` axis over ``jax.devices()``; parameters and optimiser state
are replicated, batches sharded along their first axis. Under ``jit`` every reduction over
the batch (BN statistics, covariance, log-det, Sinkhorn, ...) is a reduction over the global
batch, so losses see the same numbers on 1 or N devices.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mecjax.configlib import ConfigError

AXIS = "data"


def initialize_distributed() -> None:
  """Start ``jax.distributed`` when a launcher asked for more than one process.

  Reads ``MECJAX_COORDINATOR`` (host:port), ``MECJAX_NUM_PROCESSES`` and
  ``MECJAX_PROCESS_ID`` (set by launch/local.sh); otherwise, on SLURM or a TPU pod, lets JAX
  detect the cluster when ``MECJAX_DISTRIBUTED=auto``. On CPU the collectives go through gloo.
  """
  if os.environ.get("MECJAX_NUM_PROCESSES"):
    # Must precede any backend start (so no jax.default_backend() here); only the CPU client
    # reads it, so it is harmless on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["MECJAX_COORDINATOR"],
        num_processes=int(os.environ["MECJAX_NUM_PROCESSES"]),
        process_id=int(os.environ["MECJAX_PROCESS_ID"]))
  elif os.environ.get("MECJAX_DISTRIBUTED") == "auto":
    jax.distributed.initialize()


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def check_batch(global_batch: int, what: str = "config.batch_size") -> int:
  """Per-process batch size; stops with one line when the split is not exact."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch % devices:
    raise ConfigError(f"{what}={global_batch} is not divisible by the {devices} devices "
                     f"({processes} process(es)): use a multiple of {devices}")
  return global_batch // processes


def process_rows(global_batch: int, mesh: Mesh) -> tuple[int, int]:
  """(first row, row count) of the global batch that this process feeds.

  Derived from the sharding itself, so it stays right whatever order the devices have.
  """
  sharding = batch_sharding(mesh)
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  starts = sorted({idx[0].start or 0 for idx in index_map.values()})
  stops = sorted({idx[0].stop if idx[0].stop is not None else global_batch
                  for idx in index_map.values()})
  first, last = starts[0], stops[-1]
  rows = last - first
  if rows != global_batch // jax.process_count():
    raise RuntimeError(f"this process's devices hold rows {first}..{last} of the global "
                       "batch, not one contiguous block: unsupported device order")
  return first, rows


def to_global(local: dict, mesh: Mesh, global_batch: int) -> dict:
  """Assemble each process's rows into global arrays sharded over the batch axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, np.asarray(x), (global_batch,) + tuple(np.shape(x)[1:])), local)


def is_main_process() -> bool:
  return jax.process_index() == 0
