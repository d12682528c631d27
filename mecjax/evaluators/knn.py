"""Weighted kNN classification (InstDisc; the lightly / solo-learn monitor protocol).

Features are L2-normalised; each query's k most cosine-similar bank entries vote for their
label with weight ``exp(sim / T)``; the class with the largest vote wins. Defaults k=200,
T=0.1. Padded rows (``valid = False``) neither vote nor count as queries.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mecjax.losses.mec import l2_normalize


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
