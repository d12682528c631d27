"""SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss (``facebookresearch/swav``,
``main_swav.py``: ``distributed_sinkhorn`` and the loss loop of ``train``).

Notation: ``B`` rows (the global batch, plus any queue rows the caller prepends), ``K``
prototypes; scores are the prototype layer's outputs (cosines when features and prototypes
are unit-norm).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mecjax.losses.mec import as_float


def sinkhorn(scores: jax.Array, *, epsilon: float = 0.05, iterations: int = 3) -> jax.Array:
  """Soft assignments (B, K) of scores (B, K) by Sinkhorn-Knopp, as ``distributed_sinkhorn``:

      Q = exp(scores / epsilon)ᵀ            (K x B);   Q /= Σ Q
      repeat iterations: Q_k· /= K Σ_b Q_kb  (each prototype to 1/K)
                         Q_·b /= B Σ_k Q_kb  (each sample to 1/B)
      return (B · Q)ᵀ

  Each iteration ends on the sample normalisation, so the rows of the result sum to 1 exactly
  (up to rounding) for any ``iterations >= 1``; the prototype columns sum to ``B / K`` only
  in the limit of many iterations. No gradient is stopped here: the caller stops it.
  """
  if scores.ndim != 2:
    raise ValueError(f"sinkhorn expects (B, K) scores, got {scores.shape}")
  if iterations < 1:
    raise ValueError(f"iterations must be >= 1 for rows summing to 1, got {iterations}")
  b, k = scores.shape
  logits = as_float(scores) / epsilon
  # exp(s - c) = exp(s) · exp(-c) for the global max c: the constant cancels in the division by
  # the total sum just below, so the codes are those of the official exp(s), while float32 exp
  # cannot overflow (it would above s / epsilon = 88.7).
  q = jnp.exp(logits - jnp.max(logits)).T
  q = q / jnp.sum(q)
  for _ in range(iterations):
    q = q / jnp.sum(q, axis=1, keepdims=True) / k
    q = q / jnp.sum(q, axis=0, keepdims=True) / b
  return (q * b).T


def swav_loss(scores: Sequence[jax.Array], assignments: Sequence[jax.Array], *,
              temperature: float = 0.1) -> jax.Array:
  """Swapped prediction: the code of view i is predicted from every other view v.

      loss = 1 / (A (V-1)) Σ_{i<A} Σ_{v≠i} -mean_b Σ_k q_i[b,k] log_softmax(scores_v / t)[b,k]

  The official loop averages each code view's ``V - 1`` cross-entropies, then averages over the
  ``A`` code views (``crops_for_assign``); every code view has ``V - 1`` partners, so that is
  this mean over all ``A (V - 1)`` pairs.

  Args:
    scores: V arrays (B, K), the prototype scores of each view, the global (code) views first.
    assignments: A <= V arrays (B, K), the Sinkhorn codes of ``scores[0..A-1]`` (typically
      A = 2). Treated as constants (the official codes are computed under ``no_grad``).
    temperature: softmax temperature ``t`` (official 0.1).
  Returns:
    A scalar.
  """
  views, codes = len(scores), len(assignments)
  if views < 2 or not 1 <= codes <= views:
    raise ValueError(f"need >= 2 views and 1..{views} code views, got {views} and {codes}")
  log_probs = [jax.nn.log_softmax(as_float(s) / temperature, axis=-1) for s in scores]
  total = 0.0
  for i, q in enumerate(assignments):
    if q.shape != scores[i].shape:
      raise ValueError(f"code {i} has shape {q.shape}, its view {scores[i].shape}")
    q = jax.lax.stop_gradient(as_float(q))
    for v in range(views):
      if v != i:
        total = total - jnp.mean(jnp.sum(q * log_probs[v], axis=-1))
  return total / (codes * (views - 1))
