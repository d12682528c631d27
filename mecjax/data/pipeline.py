"""grain input pipelines: a global, deterministic sample order; each process reads its rows.

Training order: one seeded permutation of the split per epoch, the last partial batch of
every epoch dropped (PyTorch ``drop_last``), epochs concatenated into one stream. Global
step ``s`` is stream elements ``[s G, (s+1) G)``; a process reads only the rows of each global
batch that its devices hold, so the global batch (and every augmentation draw, keyed by
step and sample index) is the same whatever the number of processes or devices. The
iterator's state is one integer, saved in every checkpoint.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import grain
import numpy as np

from mecjax import parallel
from mecjax.data.sources import DataError


def _fields(ex: dict) -> dict:
  return {"image": ex["image"], "label": np.int32(ex["label"]), "index": np.int32(ex["index"])}


class TrainInput:
  """Iterator of global training batches ``{'image', 'label', 'index'}``.

  Args:
    source: random-access source (``mecjax.data.sources``).
    global_batch: rows per step over all processes.
    seed: shuffling seed.
    mesh: the device mesh (for this process's rows and the global arrays).
    total_steps: steps the run will take (sizes the finite stream).
    host_transform: ``f(example, step) -> example`` run per sample on the host (crops of
      large images), or None to ship the decoded image as is.
  """

  def __init__(self, source, *, global_batch: int, seed: int, mesh, total_steps: int,
               host_transform: Callable[[dict, int], dict] | None = None,
               threads: int = 8, prefetch: int = 4, rows: tuple[int, int] | None = None):
    n = len(source)
    self.steps_per_epoch = n // global_batch
    if self.steps_per_epoch == 0:
      raise DataError(f"the training split has {n} images, fewer than one global batch of "
                      f"{global_batch} (config.batch_size)")
    self.global_batch, self.mesh = global_batch, mesh
    # rows: (first row, count) of each global batch this process reads; from the mesh.
    first, rows = rows if rows is not None else parallel.process_rows(global_batch, mesh)
    epochs = math.ceil(max(total_steps, 1) / self.steps_per_epoch) + 1
    ds = grain.MapDataset.source(source).shuffle(seed=seed)
    ds = ds[:self.steps_per_epoch * global_batch].repeat(epochs)
    if host_transform is None:
      ds = ds.map(_fields)
    else:
      ds = ds.map_with_index(lambda k, ex: _fields(host_transform(ex, k // global_batch)))
    ds = ds.batch(rows, drop_remainder=True)[first // rows::global_batch // rows]
    self._dataset = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads)))
    self._iterator = iter(self._dataset)

  def __iter__(self):
    return self

  def next_local(self) -> dict:
    """This process's rows of the next global batch, as numpy arrays."""
    return next(self._iterator)

  def __next__(self) -> dict:
    return parallel.to_global(self.next_local(), self.mesh, self.global_batch)

  def get_state(self) -> dict:
    return self._iterator.get_state()

  def set_state(self, state: dict) -> None:
    self._iterator.set_state(state)


def eval_batches(source, *, global_batch: int, mesh,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 threads: int = 8) -> Iterator[dict]:
  """Every image of ``source`` once, in order, as global batches.

  The last batch is padded by wrapping around; ``valid`` marks the real rows.
  Yields ``{'image', 'label', 'valid'}``.
  """
  n = len(source)
  padded = math.ceil(n / global_batch) * global_batch
  first, rows = parallel.process_rows(global_batch, mesh)

  def read(i):
    ex = source[i % n]
    image = ex["image"] if transform is None else transform(ex["image"])
    return {"image": image, "label": np.int32(ex["label"]), "valid": np.bool_(i < n)}

  ds = grain.MapDataset.range(padded).map(read)
  ds = ds.batch(rows, drop_remainder=True)[first // rows::global_batch // rows]
  for local in ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                    prefetch_buffer_size=threads)):
    yield parallel.to_global(local, mesh, global_batch)
