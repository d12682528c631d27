"""Redundancy-reduction objectives on the global batch: Barlow Twins and VICReg.

Notation: ``N`` rows (the global batch), ``D`` embedding width. Both follow their official
code (``facebookresearch/barlowtwins`` ``main.py``, ``facebookresearch/vicreg``
``main_vicreg.py``); the statistics they gather across workers (SyncBN, ``all_reduce``,
``FullGatherLayer``) are the plain global-batch reductions here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mecjax.losses.mec import as_float


def _check_pair(z1: jax.Array, z2: jax.Array) -> tuple[int, int]:
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(f"expected two (N, D) embeddings of one shape, got {z1.shape} and "
                     f"{z2.shape}")
  return z1.shape


def _off_diagonal_square_sum(c: jax.Array) -> jax.Array:
  """``Σ_{i≠j} c_ij²`` of a square matrix (masked, not ``Σ c² - Σ diag²``: no cancellation)."""
  return jnp.sum(jnp.where(jnp.eye(c.shape[0], dtype=bool), 0.0, c * c))


def batch_standardize(z: jax.Array, eps: float = 1e-5) -> jax.Array:
  """``(z - mean) / sqrt(var + eps)`` per column over the rows, biased variance: the
  training-mode ``BatchNorm1d(affine=False)`` Barlow Twins applies to each view."""
  mean = jnp.mean(z, axis=0, keepdims=True)
  centred = z - mean
  var = jnp.mean(centred * centred, axis=0, keepdims=True)
  return centred / jnp.sqrt(var + eps)


def barlow_twins_loss(z1: jax.Array, z2: jax.Array, *, lambd: float = 0.0051) -> jax.Array:
  """Barlow Twins: ``Σ_i (1 - c_ii)² + lambd Σ_{i≠j} c_ij²``, ``c = bn(z1)ᵀ bn(z2) / N``.

  Args:
    z1, z2: (N, D) projector outputs of the two views (the global batch).
    lambd: weight of the redundancy-reduction (off-diagonal) term (official 0.0051).
  Returns:
    A scalar. ``c`` (D x D) is the cross-correlation of the batch-standardised embeddings.
  """
  n, _ = _check_pair(z1, z2)
  c = batch_standardize(as_float(z1)).T @ batch_standardize(as_float(z2)) / n
  on_diag = jnp.sum((1.0 - jnp.diagonal(c)) ** 2)
  return on_diag + lambd * _off_diagonal_square_sum(c)


def vicreg_terms(z1: jax.Array, z2: jax.Array, *, sim_weight: float = 25.0,
                 var_weight: float = 25.0, cov_weight: float = 1.0) -> dict[str, jax.Array]:
  """VICReg and its three unweighted terms, as ``main_vicreg.py`` computes them:

      invariance = mean((z1 - z2)²)                                   (F.mse_loss)
      x, y       = z1 - mean_n z1, z2 - mean_n z2
      std        = sqrt(Σ_n x² / (N-1) + 1e-4)                        (unbiased variance)
      variance   = mean_j relu(1 - std_x)/2 + mean_j relu(1 - std_y)/2
      covariance = Σ_{i≠j} (xᵀx / (N-1))_ij² / D + Σ_{i≠j} (yᵀy / (N-1))_ij² / D
      loss       = sim_weight · invariance + var_weight · variance + cov_weight · covariance

  Args:
    z1, z2: (N, D) expander outputs of the two views (the global batch), N >= 2.
  Returns:
    ``{"loss", "invariance", "variance", "covariance"}``, scalars.
  """
  n, d = _check_pair(z1, z2)
  x, y = as_float(z1), as_float(z2)
  invariance = jnp.mean((x - y) ** 2)
  x = x - jnp.mean(x, axis=0)
  y = y - jnp.mean(y, axis=0)
  std_x = jnp.sqrt(jnp.sum(x * x, axis=0) / (n - 1) + 1e-4)
  std_y = jnp.sqrt(jnp.sum(y * y, axis=0) / (n - 1) + 1e-4)
  variance = jnp.mean(jax.nn.relu(1.0 - std_x)) / 2 + jnp.mean(jax.nn.relu(1.0 - std_y)) / 2
  covariance = (_off_diagonal_square_sum(x.T @ x / (n - 1)) +
                _off_diagonal_square_sum(y.T @ y / (n - 1))) / d
  loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
  return {"loss": loss, "invariance": invariance, "variance": variance,
          "covariance": covariance}


def vicreg_loss(z1: jax.Array, z2: jax.Array, *, sim_weight: float = 25.0,
                var_weight: float = 25.0, cov_weight: float = 1.0) -> jax.Array:
  """The VICReg total of (N, D) embeddings; a scalar (``vicreg_terms`` for the equation)."""
  return vicreg_terms(z1, z2, sim_weight=sim_weight, var_weight=var_weight,
                      cov_weight=cov_weight)["loss"]
