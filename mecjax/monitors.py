"""Collapse monitors: pure functions of an embedding batch, logged every step.

- ``effective_rank``: ``exp(H(p))`` with ``p`` the normalised singular values of the centred
  (m, d) embedding (Roy & Vetterli, 2007): d for an isotropic code, 1 at complete collapse.
- ``embedding_std``: mean over dimensions of the per-dimension standard deviation of the
  L2-normalised embedding (SimSiam's monitor): ``1/sqrt(d)`` for a spread code, 0 at collapse.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class NonFiniteError(FloatingPointError):
  """The loss or the parameters became NaN/inf; the message names the step range and the
  last checkpoint (which the loops never overwrite with a bad one)."""


def effective_rank(z: jax.Array, eps: float = 1e-12, rel_floor: float = 1e-6) -> jax.Array:
  """Effective rank of an (m, d) batch; eigenvalues of the smaller Gram matrix.

  Eigenvalues below ``rel_floor`` x the largest are float32 rounding noise (a centred batch
  always has a null direction); ``sqrt`` would amplify that noise into the singular values,
  so they count as zero.
  """
  z = jax.lax.stop_gradient(z).astype(jnp.float32)
  z = z - jnp.mean(z, axis=0, keepdims=True)
  gram = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
  eig = jnp.linalg.eigvalsh(gram)
  s = jnp.where(eig > rel_floor * eig[-1], jnp.sqrt(jnp.maximum(eig, 0.0)), 0.0)
  p = s / jnp.maximum(jnp.sum(s), eps)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, eps)), 0.0)))


def embedding_std(z: jax.Array) -> jax.Array:
  """Mean per-dimension std of the row-normalised (m, d) batch."""
  z = jax.lax.stop_gradient(z).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  return jnp.mean(jnp.std(z, axis=0))


def collapse_metrics(z: jax.Array) -> dict:
  return {"effective_rank": effective_rank(z), "embedding_std": embedding_std(z)}
