"""E2MC's effective-entropy criterion: marginal m-spacings entropies and a covariance penalty.

Notation: ``N`` rows (the global batch), ``D`` embedding width. Follows the official code
(``deepc94/e2mc``, ``main_*_ent_ft.py``): each view's embedding is squashed into [0, 1],
centred per dimension, its marginal entropies estimated from sorted samples and its
dimensions decorrelated. The gathered batch there (``FullGatherLayer``) is the plain global
batch here; ``N - 1`` in the covariance is that global batch size.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mecjax.losses.mec import as_float

TRANSFORMS = ("sigmoid", "gaussian_cdf")


def squash(x: jax.Array, transform: str) -> jax.Array:
  """Map an embedding into [0, 1] elementwise.

  ``'sigmoid'`` (the paper's "hypercube", for un-normalised embeddings such as VICReg's) or
  ``'gaussian_cdf'`` = ``0.5 (1 + erf(x / sqrt 2))`` (the "hypersphere" variant, for methods
  that L2-normalise later: SwAV, SimSiam).
  """
  if transform == "sigmoid":
    return jax.nn.sigmoid(x)
  if transform == "gaussian_cdf":
    return 0.5 * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0)))
  raise ValueError(f"transform={transform!r}: expected one of {TRANSFORMS}")


def spacing_window(n: int) -> int:
  """The m-spacings window ``w = round(sqrt(N))`` of the official code."""
  return int(round(math.sqrt(n)))


def m_spacings_entropy(x: jax.Array, *, eps: float = 1e-7) -> jax.Array:
  """Per-dimension m-spacings (Vasicek) entropy estimate.

  ``H_j = 1/(N-w) Σ_{i=1..N-w} log( (N+1)/w · (x_(i+w),j - x_(i),j) + eps )``, where
  ``x_(1),j <= ... <= x_(N),j`` is dimension ``j`` sorted over the batch and
  ``w = round(sqrt(N))``. Gradients flow through the sort (to the samples at the ends of
  each spacing); they are exact away from ties.

  Args:
    x: (N, D) samples (the global batch), N >= 2.
    eps: added inside the log so coincident samples stay finite (official 1e-7).
  Returns:
    (D,) entropy estimates in nats. Points evenly spaced on [0, 1] give about 0 (the
    entropy of the uniform distribution on [0, 1]).
  """
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"expected (N, D) samples with N >= 2, got shape {x.shape}")
  n = x.shape[0]
  w = spacing_window(n)
  s = jnp.sort(as_float(x), axis=0)
  spacings = (s[w:] - s[:n - w]) * ((n + 1) / w)
  return jnp.sum(jnp.log(spacings + eps), axis=0) / (n - w)


def squashed_covariance(x: jax.Array) -> jax.Array:
  """``Σ_{i≠j} C_ij² / D`` with ``C = xᵀ x / (N - 1)``; ``x`` already centred, (N, D)."""
  n, d = x.shape
  c = x.T @ x / (n - 1)
  return jnp.sum(jnp.where(jnp.eye(d, dtype=bool), 0.0, c * c)) / d


def e2mc_terms(x1: jax.Array, x2: jax.Array, *, transform: str,
               eps: float = 1e-7) -> dict[str, jax.Array]:
  """The unweighted E2MC terms of two views: ``entropy`` = (H1 + H2) / 2, ``cov`` =
  Cov1 + Cov2, with ``H_v`` the mean over dimensions of ``m_spacings_entropy`` and ``Cov_v``
  ``squashed_covariance`` of view ``v`` squashed by ``transform`` and centred per dimension.
  Also ``entropy1``, ``entropy2``. Shapes: (N, D) each, the global batch."""
  if x1.ndim != 2 or x1.shape != x2.shape:
    raise ValueError(f"expected two (N, D) embeddings of one shape, got {x1.shape} and "
                     f"{x2.shape}")
  out = {}
  covs = []
  for i, x in enumerate((x1, x2), start=1):
    u = squash(as_float(x), transform)
    u = u - jnp.mean(u, axis=0, keepdims=True)
    out[f"entropy{i}"] = jnp.mean(m_spacings_entropy(u, eps=eps))
    covs.append(squashed_covariance(u))
  out["entropy"] = (out["entropy1"] + out["entropy2"]) / 2
  out["cov"] = covs[0] + covs[1]
  return out


def e2mc_loss(x1: jax.Array, x2: jax.Array, *, beta: float, gamma: float, transform: str,
              eps: float = 1e-7) -> tuple[jax.Array, dict[str, jax.Array]]:
  """E2MC criterion: ``gamma (Cov1 + Cov2) - beta (H1 + H2) / 2`` (added to a base loss).

  Args:
    x1, x2: (N, D) embeddings of the two views over the global batch, with gradient (the
      tensor each base method names: VICReg's expander output, SwAV's un-normalised head
      output, SimSiam's projector output).
    beta: weight of the mean marginal entropy (paper: VICReg 1000, SwAV 1, SimSiam 0.001).
    gamma: weight of the covariance penalty (paper: VICReg 100, SwAV 25, SimSiam 0.01).
    transform: ``'sigmoid'`` or ``'gaussian_cdf'`` (see ``squash``).
    eps: inside the spacings' log.
  Returns:
    (scalar loss, ``e2mc_terms`` dict): log ``entropy`` (H) and ``cov`` separately.
  """
  terms = e2mc_terms(x1, x2, transform=transform, eps=eps)
  return gamma * terms["cov"] - beta * terms["entropy"], terms
