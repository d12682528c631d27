"""What every evaluator shares: one way to map a predict function over the eval batches
of a source and gather the outputs on the host, a per-step memo of those outputs (so the
kNN monitor and the probe forward the eval split once between them), and the context
the pre-training loop builds its evaluators from.

An evaluator is an object built from a predict function and its data whose
``run(state)`` yields ``(key, value)`` pairs; ``mecjax.evaluators.registry`` builds them
by type from ``config.evals``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from mecjax import data as data_lib


def to_host(x) -> np.ndarray:
  """A global (possibly multi-process) array as one host array, the same in every
  process."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def map_batches(fn: Callable, args: tuple, source, *, batch_size: int, mesh,
                transform: Callable | None = None, threads: int = 8):
  """``fn(*args, images)`` over every image of ``source`` once, in order.

  Args:
    fn: a (jitted) function of ``args`` and a global batch of images ``(B, H, W, C)``
      returning an array ``(B, ...)``.
    source: a data source (``mecjax.data.sources``); its rows are read with ``transform``
      (the recipe's eval transform) in global batches of ``batch_size`` sharded over
      ``mesh``, the last one padded.
  Returns:
    ``(outputs (N, ...), labels (N, ...))`` as host arrays in every process, padding
    dropped (N = ``len(source)``).
  """
  outs, labels, valid = [], [], []
  for batch in data_lib.eval_batches(source, global_batch=batch_size, mesh=mesh,
                                     transform=transform, threads=threads):
    outs.append(to_host(fn(*args, batch["image"])))
    labels.append(to_host(batch["label"]))
    valid.append(to_host(batch["valid"]))
  keep = np.concatenate(valid)
  return np.concatenate(outs)[keep], np.concatenate(labels)[keep]


def batch_mapper(config, recipe, mesh) -> Callable:
  """``map_batches`` with the run's eval batch size, host threads and eval transform:
  ``mapper(fn, args, source) -> (outputs, labels)``."""
  return functools.partial(_map_with, config.eval_batch_size, mesh, recipe.eval_transform(),
                           config.data.host_threads)


def _map_with(batch_size, mesh, transform, threads, fn, args, source):
  return map_batches(fn, args, source, batch_size=batch_size, mesh=mesh, transform=transform,
                     threads=threads)


class StepMemo:
  """``memo(state, source) -> compute(state, source)``, computed once per (state.step,
  source): evaluators run at the same step share one forward pass of a split. Only the
  newest step's results are kept."""

  def __init__(self, compute: Callable):
    self.compute = compute
    self._step, self._cache = None, {}

  def __call__(self, state, source):
    step = int(jax.device_get(state.step))
    if step != self._step:
      self._step, self._cache = step, {}
    if id(source) not in self._cache:
      self._cache[id(source)] = (source, self.compute(state, source))
    return self._cache[id(source)][1]


@dataclasses.dataclass
class Context:
  """What the pre-training loop gives each evaluator type's ``build(name, cfg, context)``.

  Attributes:
    config: the run's config (``config.knn``, ``config.probe`` hold the defaults).
    train: the training split's source (un-augmented reads).
    load_eval: ``load_eval() -> source`` of the eval split, read on first use (``eval``).
    num_classes: classes of the training split (0: unlabelled data).
    features: ``features(state, source) -> (features (N, F), labels (N,))`` on the host:
      the encoder's eval-mode (or the configured BN mode's) features, shared per step.
    heads: named predict functions of features, e.g. ``heads['probe'](state, features)
      -> logits`` of the online probe.
    bn_mode: how the features' BN is run ("eval": running statistics; "batch").
  """
  config: Any
  train: Any
  load_eval: Callable[[], Any]
  num_classes: int
  features: Callable
  heads: dict = dataclasses.field(default_factory=dict)
  bn_mode: str = "eval"

  @functools.cached_property
  def eval(self):
    return self.load_eval()


def setting(cfg, fallback, key: str):
  """``cfg[key]`` where set (not None) or present, else ``fallback[key]``: an evals entry's
  unset fields fall back to the older section (``config.knn``)."""
  value = cfg.get(key) if key in cfg else None
  return fallback[key] if value is None else value
