"""The criteria E2MC's ablation (paper Table 3, Appendix A) continues SwAV with instead of
E2MC's: variance-covariance, uniformity (alignment-uniformity) and MMCR's nuclear norm.

Notation: ``V`` views, each ``(N, D)`` over the global batch (N samples, D dims), ``x̂`` the
row-wise L2 normalisation (eps 1e-12). Each criterion is added to the SwAV loss, as the
official ablation scripts add theirs; they act on SwAV's 128-d head output of the views
named below, with gradient.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from mecjax.losses.mec import as_float, l2_normalize

VC_SPACES = ("hypersphere", "projector")


def _views(views: Sequence[jax.Array], at_least: int = 1) -> list[jax.Array]:
  views = [as_float(v) for v in views]
  if len(views) < at_least or any(v.ndim != 2 or v.shape != views[0].shape for v in views):
    raise ValueError(f"expected at least {at_least} (N, D) views of one shape, got "
                     f"{[tuple(v.shape) for v in views]}")
  if views[0].shape[0] < 2:
    raise ValueError(f"expected N >= 2 samples per view, got shape {views[0].shape}")
  return views


def vc_terms(views: Sequence[jax.Array], *, space: str = "hypersphere"
             ) -> dict[str, jax.Array]:
  """Variance and covariance terms of VICReg, per view, as the E2MC ablation applies them.

  For each view ``x`` (``x̂`` when ``space='hypersphere'``, the raw head output when
  ``'projector'``), centred per dimension over the batch:

      std_j = sqrt( Σ_n x_nj² / (N-1) + 1e-4 )                      (unbiased)
      V(x)  = mean_j relu(s - std_j),    s = 1/sqrt(D) (hypersphere: the std of a uniform
                                         direction per dim) or 1 (projector)
      C(x)  = Σ_{i≠j} (xᵀx / (N-1))_ij² / D

  Returns ``std`` = mean over views of V, ``cov`` = sum over views of C (the official
  script averages the hinge and sums the covariance over the views).

  Args:
    views: V >= 1 arrays (N, D), the global batch.
    space: ``'hypersphere'`` or ``'projector'``.
  """
  if space not in VC_SPACES:
    raise ValueError(f"space={space!r}: expected one of {VC_SPACES}")
  views = _views(views)
  n, d = views[0].shape
  target = 1.0 / jnp.sqrt(d) if space == "hypersphere" else 1.0
  std_term, cov_term = 0.0, 0.0
  for x in views:
    if space == "hypersphere":
      x = l2_normalize(x)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    std = jnp.sqrt(jnp.sum(x * x, axis=0) / (n - 1) + 1e-4)
    std_term = std_term + jnp.mean(jax.nn.relu(target - std)) / len(views)
    c = x.T @ x / (n - 1)
    cov_term = cov_term + jnp.sum(jnp.where(jnp.eye(d, dtype=bool), 0.0, c * c)) / d
  return {"std": std_term, "cov": cov_term}


def vc_loss(views: Sequence[jax.Array], *, std_weight: float = 0.1, cov_weight: float = 0.001,
            space: str = "hypersphere") -> tuple[jax.Array, dict[str, jax.Array]]:
  """``mu · std + nu · cov`` of ``vc_terms`` (paper: mu = 0.1, nu = 0.001, on the two
  full-size crops). Returns (scalar, terms)."""
  terms = vc_terms(views, space=space)
  return std_weight * terms["std"] + cov_weight * terms["cov"], terms


def uniformity(x: jax.Array, *, t: float = 2.0) -> jax.Array:
  """Wang & Isola's uniformity of one view: ``log mean_{i<j} exp(-t ||x̂_i - x̂_j||²)`` over
  the ``N (N-1) / 2`` pairs of distinct samples of the view (``torch.pdist``'s pairs).
  ``x``: (N, D); returns a scalar (at most 0; lower is more uniform)."""
  (x,) = _views([x])
  u = l2_normalize(x)
  sq = jnp.sum(u * u, axis=1)
  # ||a - b||² = |a|² + |b|² - 2 a·b, clamped: rounding may leave it a hair below 0.
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (u @ u.T), 0.0)
  n = x.shape[0]
  upper = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)
  kernel = jnp.where(upper, jnp.exp(-t * d2), 0.0)
  return jnp.log(jnp.sum(kernel) / (n * (n - 1) / 2))


def alignment(x1: jax.Array, x2: jax.Array) -> jax.Array:
  """Wang & Isola's alignment with alpha = 2: ``mean_n ||x̂1_n - x̂2_n||²``; (N, D) each."""
  x1, x2 = _views([x1, x2], at_least=2)
  return jnp.mean(jnp.sum((l2_normalize(x1) - l2_normalize(x2)) ** 2, axis=1))


def au_loss(views: Sequence[jax.Array], *, t: float = 2.0, align_weight: float = 0.0
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The alignment-uniformity criterion of the E2MC ablation:

      AU = mean_v uniformity(x_v; t) + align_weight · alignment(x_1, x_2)

  The uniformity is taken over each view's own pairs (never across views) and averaged over
  the views, as the official SwAV ablation script does; there SwAV's swapped prediction is
  the alignment, so ``align_weight`` is 0 (the official setting); > 0 adds Wang & Isola's
  alpha = 2 alignment of the first two views. The paper's lambda (0.5) weights AU in the
  total loss (``config.regularizer.weight``). Shapes: V >= 1 views (N, D); returns
  (scalar, ``{'uniformity', 'alignment'}``)."""
  views = _views(views)
  unif = sum(uniformity(x, t=t) for x in views) / len(views)
  terms = {"uniformity": unif}
  loss = unif
  if align_weight:
    terms["alignment"] = alignment(views[0], views[1])
    loss = loss + align_weight * terms["alignment"]
  return loss, terms


def mmcr_loss(views: Sequence[jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MMCR's criterion: minus the nuclear norm of the per-image centroids of the views.

      c_n = (1/V) Σ_v x̂_v,n          (N, D): the mean of each image's L2-normalised views
      MMCR = -||C||_* = -Σ_k σ_k(C)

  over all views of each image and the whole global batch (no division by N, as the
  official script). Rows that are not finite are set to 0, which leaves the singular values
  of the other rows unchanged (the official script drops them). The gradient
  ``-U Vᵀ`` (thin SVD) is exact where the singular values are distinct and non-zero.
  Shapes: V >= 1 views (N, D); returns (scalar, ``{'nuclear_norm'}``)."""
  views = _views(views)
  centroids = sum(l2_normalize(x) for x in views) / len(views)
  finite = jnp.all(jnp.isfinite(centroids), axis=1, keepdims=True)
  centroids = jnp.where(finite, centroids, 0.0)
  nuclear = jnp.sum(jnp.linalg.svd(centroids, compute_uv=False))
  return -nuclear, {"nuclear_norm": nuclear}
