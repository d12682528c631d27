"""grain input pipelines: a global, deterministic sample order; each process reads its rows.

Training order: one seeded permutation of the split per epoch, the last partial batch of
every epoch dropped (PyTorch ``drop_last``), epochs concatenated into one stream. Global
step ``s`` is stream elements ``[s G, (s+1) G)``; a process reads only the rows of each global
batch that its devices hold, so the global batch (and every augmentation draw, keyed by
step and sample index) is the same whatever the number of processes or devices, or of host
worker processes (``config.data.host_workers``). The iterator's state is one integer, saved
in every checkpoint.
"""

from __future__ import annotations

import functools
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
      large images), or None to ship the decoded image as is. If it has
      ``from_encoded(data, index, step)`` and the source ``load(i, decode)`` (files), it
      receives the encoded bytes instead, so that it can decode at a reduced scale.
    threads: reading threads (per worker process when ``workers > 0``).
    workers: host worker processes (grain's multiprocessing prefetch); 0 reads in this
      process. Worker ``w`` of ``W`` builds local batches ``w, w + W, ...`` and grain
      interleaves them back in order; every draw is keyed by (seed, step, sample index),
      so the batches are the same for any ``workers``.

  The state (``get_state``) is ``{'next_index': batches read}`` whatever ``workers`` is (a
  checkpoint written with 2 workers resumes with 0 and back): ``set_state`` restarts the
  stream at that batch.
  """

  def __init__(self, source, *, global_batch: int, seed: int, mesh, total_steps: int,
               host_transform: Callable[[dict, int], dict] | None = None,
               threads: int = 8, prefetch: int = 4, rows: tuple[int, int] | None = None,
               workers: int = 0):
    n = len(source)
    self.steps_per_epoch = n // global_batch
    if self.steps_per_epoch == 0:
      raise DataError(f"the training split has {n} images, fewer than one global batch of "
                      f"{global_batch} (config.batch_size)")
    if workers < 0 or int(workers) != workers:
      raise DataError(f"config.data.host_workers={workers}: expected a whole number >= 0")
    self.global_batch, self.mesh = global_batch, mesh
    self.threads, self.prefetch, self.workers = threads, prefetch, int(workers)
    # rows: (first row, count) of each global batch this process reads; from the mesh.
    first, rows = rows if rows is not None else parallel.process_rows(global_batch, mesh)
    epochs = math.ceil(max(total_steps, 1) / self.steps_per_epoch) + 1
    encoded = (host_transform is not None and hasattr(host_transform, "from_encoded")
               and hasattr(source, "load"))
    # The same permutation as MapDataset.source(source).shuffle(seed): grain's shuffle
    # depends on the seed and the length only.
    ds = (grain.MapDataset.range(n) if encoded else grain.MapDataset.source(source))
    ds = ds.shuffle(seed=seed)
    ds = ds[:self.steps_per_epoch * global_batch].repeat(epochs)
    if encoded:
      ds = ds.map_with_index(functools.partial(_read_encoded, source, host_transform,
                                               global_batch))
    elif host_transform is None:
      ds = ds.map(_fields)
    else:
      ds = ds.map_with_index(functools.partial(_transform, host_transform, global_batch))
    self._batches = ds.batch(rows, drop_remainder=True)[first // rows::global_batch // rows]
    self._next = 0
    self._iterator = None   # started on the first batch (worker processes start then)

  def _start(self):
    ds = self._batches[self._next:].to_iter_dataset(grain.ReadOptions(
        num_threads=self.threads, prefetch_buffer_size=max(self.prefetch, self.threads)))
    if self.workers:
      from absl import flags   # grain's process prefetch reads its absl flags
      if not flags.FLAGS.is_parsed():   # a library caller (tests, notebooks): defaults
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers, per_worker_buffer_size=max(self.prefetch, 1)))
    return iter(ds)

  def __iter__(self):
    return self

  def next_local(self) -> dict:
    """This process's rows of the next global batch, as numpy arrays."""
    if self._iterator is None:
      self._iterator = self._start()
    batch = next(self._iterator)
    self._next += 1
    return batch

  def __next__(self) -> dict:
    return parallel.to_global(self.next_local(), self.mesh, self.global_batch)

  def get_state(self) -> dict:
    return {"next_index": self._next}

  def set_state(self, state: dict) -> None:
    if "next_index" not in state:
      raise DataError(f"input iterator state {state!r}: expected {{'next_index': int}}")
    self.close()
    self._next = int(state["next_index"])

  def close(self) -> None:
    """Stop the worker processes (a new iterator starts on the next batch)."""
    it, self._iterator = self._iterator, None
    if it is not None and hasattr(it, "close"):
      it.close()


def _transform(host_transform, global_batch, k, ex):
  return _fields(host_transform(ex, k // global_batch))


def _read_encoded(source, host_transform, global_batch, k, i):
  step = k // global_batch
  return _fields(source.load(i, lambda data: host_transform.from_encoded(data, i, step)))


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
