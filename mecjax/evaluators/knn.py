"""Weighted kNN classification (InstDisc; the lightly / solo-learn monitor protocol).

Features are L2-normalised; each query's k most cosine-similar bank entries vote for their
label with weight ``exp(sim / T)``; the class with the largest vote wins. Defaults k=200,
T=0.1. Padded rows (``valid = False``) neither vote nor count as queries.

As an evaluator (type ``knn`` of ``config.evals``): ``Evaluator(features, bank, queries,
...)`` yields ``knn_top1`` of the eval split's features against the training split's (the
bank, capped at ``max_train_examples`` by a class-balanced subset).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from mecjax import configlib
from mecjax.data import sources
from mecjax.evaluators import common
from mecjax.losses.mec import l2_normalize

log = logging.getLogger("mecjax")


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "temperature", "chunk"))
def knn_top1(bank: jax.Array, bank_labels: jax.Array, bank_valid: jax.Array,
             queries: jax.Array, query_labels: jax.Array, query_valid: jax.Array, *,
             num_classes: int, k: int = 200, temperature: float = 0.1,
             chunk: int = 256) -> jax.Array:
  """Top-1 accuracy (fraction of valid queries) of weighted kNN.

  Args:
    bank: (N, F) features of the labelled set (train split); bank_labels (N,) ints;
      bank_valid (N,) bools.
    queries: (Q, F) features to classify; query_labels (Q,); query_valid (Q,).
  """
  bank = l2_normalize(bank.astype(jnp.float32))
  queries = l2_normalize(queries.astype(jnp.float32))
  k = min(k, bank.shape[0])
  q = queries.shape[0]
  pad = (-q) % chunk
  queries = jnp.pad(queries, ((0, pad), (0, 0)))
  query_labels = jnp.pad(query_labels, (0, pad))
  query_valid = jnp.pad(query_valid, (0, pad))

  def correct(args):
    feats, labels, valid = args
    sim = feats @ bank.T
    sim = jnp.where(bank_valid[None, :], sim, -jnp.inf)
    top, idx = jax.lax.top_k(sim, k)
    weights = jnp.where(jnp.isfinite(top), jnp.exp(top / temperature), 0.0)
    votes = jnp.zeros((feats.shape[0], num_classes), jnp.float32)
    votes = votes.at[jnp.arange(feats.shape[0])[:, None], bank_labels[idx]].add(weights)
    return jnp.sum((jnp.argmax(votes, -1) == labels) & valid)

  split = lambda x: x.reshape((-1, chunk) + x.shape[1:])
  hits = jax.lax.map(correct, (split(queries), split(query_labels), split(query_valid)))
  return jnp.sum(hits) / jnp.maximum(jnp.sum(query_valid), 1)


class Evaluator:
  """Weighted kNN top-1 of ``queries`` against ``bank``.

  Args:
    features: ``features(state, source) -> (features (N, F), labels (N,))`` on the host
      (``common.map_batches`` of a predict function, or its ``StepMemo``).
    bank, queries: labelled sources (the training and the eval split).
    num_classes, k, temperature: as ``knn_top1``.
    note: what the features are, for the log line (e.g. "BN in eval mode").
  """

  def __init__(self, features, bank, queries, *, num_classes: int, k: int = 200,
               temperature: float = 0.1, note: str = ""):
    self.features, self.bank, self.queries = features, bank, queries
    self.num_classes, self.k, self.temperature, self.note = num_classes, k, temperature, note

  def run(self, state):
    bank_x, bank_y = self.features(state, self.bank)
    query_x, query_y = self.features(state, self.queries)
    top1 = float(knn_top1(jnp.asarray(bank_x), jnp.asarray(bank_y),
                          jnp.ones(len(bank_y), bool), jnp.asarray(query_x),
                          jnp.asarray(query_y), jnp.ones(len(query_y), bool),
                          num_classes=self.num_classes, k=self.k,
                          temperature=self.temperature))
    log.info("kNN at step %d (%sk=%d, T=%g): top-1 %.4f of %d queries, bank %d",
             int(np.asarray(jax.device_get(state.step))),
             f"{self.note}, " if self.note else "", self.k, self.temperature, top1,
             len(query_y), len(bank_y))
    yield "knn_top1", top1


def build(name: str, cfg, context: common.Context) -> Evaluator | None:
  """The ``knn`` evaluator of ``config.evals.<name>``: k, temperature and
  max_train_examples default to ``config.knn``'s; none when ``config.knn.enabled`` is
  False or the data is unlabelled."""
  fallback = context.config.knn
  if not fallback.enabled or not context.num_classes:
    return None
  k, temperature = common.setting(cfg, fallback, "k"), common.setting(cfg, fallback,
                                                                     "temperature")
  if k <= 0 or temperature <= 0:
    raise configlib.ConfigError(f"config.evals.{name}: k={k}, temperature={temperature}: "
                                "expected both > 0")
  bank = sources.subset(context.train, common.setting(cfg, fallback, "max_train_examples"))
  return Evaluator(context.features, bank, context.eval, num_classes=context.num_classes,
                   k=int(k), temperature=float(temperature),
                   note=f"BN in {context.bn_mode} mode")
