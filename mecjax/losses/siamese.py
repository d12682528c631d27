"""Negative-cosine objectives of the predictor/stop-gradient methods, SimSiam and BYOL.

``p`` is the online branch's predictor output, ``z`` the target (SimSiam: the other view's
projector output; BYOL: the EMA target network's). One direction of the symmetric loss: the
caller adds the swapped pair. ``x̂`` is the row-wise L2 normalisation with eps 1e-12 on the
norm (``mec.l2_normalize``); the official codes' eps (torch ``cosine_similarity`` 1e-8 on
each norm, BYOL 1e-12 on the squared norm) differ only for rows of norm below ~1e-6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mecjax.losses.mec import as_float, l2_normalize


def _check_pair(p: jax.Array, z: jax.Array) -> None:
  if p.ndim != 2 or p.shape != z.shape:
    raise ValueError(f"expected two (N, d) arrays of one shape, got {p.shape} and {z.shape}")


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """(N, d), (N, d) -> (N,): ``Σ_j â_j b̂_j``, the cosine similarity of each row pair."""
  return jnp.sum(l2_normalize(as_float(a)) * l2_normalize(as_float(b)), axis=-1)


def simsiam_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """SimSiam's ``D(p, z) = -mean_n cos(p_n, stopgrad(z_n))`` of (N, d) arrays; a scalar.

  The gradient flows into ``p`` only: the stop-gradient on ``z`` is what keeps SimSiam from
  collapsing, so it lives here rather than with the caller.
  """
  _check_pair(p, z)
  return -jnp.mean(cosine(p, jax.lax.stop_gradient(z)))


def byol_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's ``mean_n ||p̂_n - stopgrad(ẑ_n)||² = 2 - 2 mean_n cos(p_n, z_n)``; a scalar.

  Args:
    p: (N, d) online predictions.
    z: (N, d) target projections; no gradient flows into them (the target network is an EMA).
  """
  _check_pair(p, z)
  return 2.0 - 2.0 * jnp.mean(cosine(p, jax.lax.stop_gradient(z)))
