"""Devices, processes and shardings: data parallel over every device of every process.

One Mesh with a single ``data`` axis over ``jax.devices()``; parameters and optimiser state
are replicated, batches sharded along their first axis. Under ``jit`` every reduction over
the batch (BN statistics, covariance, log-det, Sinkhorn, ...) is a reduction over the global
batch, so losses see the same numbers on 1 or N devices.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mecjax.configlib import ConfigError

AXIS = "data"


def initialize_distributed() -> None:
  """Start ``jax.distributed`` when a launcher asked for more than one process.

  Reads ``MECJAX_COORDINATOR`` (host:port), ``MECJAX_NUM_PROCESSES`` and
  ``MECJAX_PROCESS_ID`` (set by launch/local.sh); ``MECJAX_DISTRIBUTED=slurm`` (set by
  launch/slurm.sbatch) derives them from the SLURM task environment (``slurm_layout``);
  ``MECJAX_DISTRIBUTED=auto`` lets JAX detect the cluster (a TPU pod). On CPU the collectives
  go through gloo.
  """
  mode = os.environ.get("MECJAX_DISTRIBUTED", "")
  if os.environ.get("MECJAX_NUM_PROCESSES"):
    # Must precede any backend start (so no jax.default_backend() here); only the CPU client
    # reads it, so it is harmless on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["MECJAX_COORDINATOR"],
        num_processes=int(os.environ["MECJAX_NUM_PROCESSES"]),
        process_id=int(os.environ["MECJAX_PROCESS_ID"]))
  elif mode == "slurm":
    layout = slurm_layout(os.environ)
    if layout.num_processes > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only nodes
      # "deactivate": otherwise JAX's SLURM detection fills a None local_device_ids with
      # [SLURM_LOCALID], one GPU, where one process per node should keep them all.
      jax.distributed.initialize(
          coordinator_address=layout.coordinator, num_processes=layout.num_processes,
          process_id=layout.process_id, local_device_ids=layout.local_device_ids,
          cluster_detection_method="deactivate")
  elif mode == "auto":
    jax.distributed.initialize()
  elif mode:
    raise ConfigError(f"MECJAX_DISTRIBUTED={mode!r} is not understood: use 'slurm' or 'auto'")


class SlurmLayout(NamedTuple):
  coordinator: str                      # host:port of process 0
  num_processes: int
  process_id: int
  local_device_ids: list[int] | None    # None: every GPU this task sees


# Default coordinator port: a function of the job id, so two jobs sharing a node do not
# collide, and the same in every task of one job (MECJAX_PORT overrides it).
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 20000, 10000


def slurm_layout(env: Mapping[str, str]) -> SlurmLayout:
  """Where this SLURM task sits: coordinator, process count and id, and its GPUs.

  A pure function of the environment of one ``srun`` task. One process per node (one task
  on this node) keeps every GPU the node gave it; several tasks on a node split its GPUs in
  equal consecutive blocks by ``SLURM_LOCALID`` (one each with ``--ntasks-per-node`` =
  GPUs), unless SLURM already narrowed ``CUDA_VISIBLE_DEVICES`` to this task's own GPUs.
  JAX's own SLURM detection cannot do the one-process-per-node case: it always restricts a
  task to the one GPU numbered by its local id.
  """
  def get(*names: str) -> str:
    for name in names:
      if env.get(name):
        return env[name]
    raise ConfigError(f"MECJAX_DISTRIBUTED=slurm but {names[0]} is not set: start the "
                      "processes with srun inside a SLURM job (launch/slurm.sbatch)")

  def integer(*names: str) -> int:
    value = get(*names)
    try:
      return int(value)
    except ValueError:
      raise ConfigError(f"{names[0]}={value!r} is not an integer") from None

  num_processes = integer("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
  process_id = integer("SLURM_PROCID")
  port = integer("MECJAX_PORT") if env.get("MECJAX_PORT") else (
      _SLURM_PORT_BASE + integer("SLURM_JOB_ID") % _SLURM_PORT_SPAN)
  host = first_host(get("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"))
  tasks_here = tasks_on_node(get("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"),
                             integer("SLURM_NODEID"))

  local_device_ids = None
  if tasks_here > 1:
    local_id = integer("SLURM_LOCALID")
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    on_node = int(env["SLURM_GPUS_ON_NODE"]) if env.get("SLURM_GPUS_ON_NODE") else None
    if not visible:
      local_device_ids = [local_id]         # nothing known: one GPU per task, JAX's default
    elif on_node is None or len(visible) >= on_node:
      # This task sees all the node's GPUs: take its block of them.
      if len(visible) % tasks_here:
        raise ConfigError(f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}: "
                          f"{len(visible)} GPUs do not split over the {tasks_here} tasks of "
                          "this node; use --ntasks-per-node equal to the GPUs or 1")
      per_task = len(visible) // tasks_here
      local_device_ids = list(range(local_id * per_task, (local_id + 1) * per_task))
  return SlurmLayout(f"{host}:{port}", num_processes, process_id, local_device_ids)


def first_host(nodelist: str) -> str:
  """The first host of a SLURM host list: ``node[001-004,007],gpu2`` -> ``node001``."""
  # The first top-level entry (commas inside brackets separate ranges, not hosts), then each
  # bracket group replaced by the first number of its first range, zero padding kept.
  nodelist = nodelist.strip()
  first = re.match(r"(?:[^,\[\]]|\[[^\[\]]+\])+", nodelist)
  if not first or first.end() < len(nodelist) and nodelist[first.end()] != ",":
    raise ConfigError(f"SLURM node list {nodelist!r} is not understood")
  return re.sub(r"\[([^\],-]*)[^\]]*\]", lambda m: m.group(1), first.group(0))


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
  """Tasks on node ``node_id`` of SLURM's compressed count: ``2(x3),1`` -> 2, 2, 2, 1."""
  counts = []
  for part in tasks_per_node.split(","):
    m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if not m:
      raise ConfigError(f"SLURM tasks per node {tasks_per_node!r} is not understood")
    counts += [int(m.group(1))] * int(m.group(2) or 1)
  if not 0 <= node_id < len(counts):
    raise ConfigError(f"SLURM_NODEID={node_id} is outside the {len(counts)} node(s) of "
                      f"tasks per node {tasks_per_node!r}")
  return counts[node_id]


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
