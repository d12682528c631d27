"""Maximum Entropy Coding (Liu et al., NeurIPS 2022), as the official code computes it.

Notation: ``m`` rows (the global batch), ``d`` embedding width, ``x̂`` the row-wise L2
normalisation ``x / max(||x||, 1e-12)`` (``torch.nn.functional.normalize``), and

    C = ẑ1 ẑ2ᵀ / lamda_inv        (m x m, "batch-wise")

``Tr(Cᵏ)`` equals ``Tr(((ẑ1ᵀ ẑ2) / lamda_inv)ᵏ)`` (the d x d, "feature-wise" form: the two
share their non-zero eigenvalues), so the series and the log-det build whichever matrix is
smaller; the value is the same. Singular values are *not* shared; ``mec_spectral_norm``
reduces the m x m norm to d x d through thin QR factors instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Row-wise ``x / max(||x||_2, eps)``, as ``torch.nn.functional.normalize``."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def as_float(x: jax.Array) -> jax.Array:
  """x in at least float32 (float64 stays float64): what every loss computes in."""
  # The series, the log-det and their reductions stay in at least float32 even when the
  # network computes in bfloat16; float64 inputs stay float64 (parity tests).
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_pair(z1: jax.Array, z2: jax.Array) -> tuple[int, int]:
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(
        f"MEC expects two (m, d) embeddings of the same shape, got {z1.shape} and {z2.shape}")
  return z1.shape


def correlation(z1: jax.Array, z2: jax.Array, lamda_inv) -> jax.Array:
  """The smaller of ``ẑ1 ẑ2ᵀ / lamda_inv`` (m x m) and ``ẑ1ᵀ ẑ2 / lamda_inv`` (d x d).

  Both have the same non-zero eigenvalues, so traces of powers and ``det(I + .)`` agree
  between them (their singular values differ).
  """
  m, d = _check_pair(z1, z2)
  a = l2_normalize(as_float(z1))
  b = l2_normalize(as_float(z2))
  c = a @ b.T if m <= d else a.T @ b
  return c / lamda_inv


def power_traces(c: jax.Array, order: int) -> list[jax.Array]:
  """``[Tr(C), Tr(C²), ..., Tr(C^order)]`` of a square matrix.

  Forms the powers up to ``p = ceil(order / 2)`` and takes each higher trace as a
  Frobenius product, ``Tr(Cᵃ Cᵇ) = sum(Cᵃ ∘ (Cᵇ)ᵀ)`` with ``a = p``, ``b = k - p``: order 4
  costs one matrix product beyond C (C²) instead of three.
  """
  if order < 1:
    raise ValueError(f"order must be >= 1, got {order}")
  top = (order + 1) // 2
  powers = [c]
  for _ in range(top - 1):
    powers.append(powers[-1] @ c)
  traces = [jnp.trace(p) for p in powers]
  for k in range(top + 1, order + 1):
    traces.append(jnp.sum(powers[top - 1] * powers[k - top - 1].T))
  return traces


def taylor_log_trace(c: jax.Array, order: int) -> jax.Array:
  """``Tr Σ_{k=1..order} (-1)^(k+1) Cᵏ / k``, the order-n Taylor series of ``Tr log(I + C)``."""
  traces = power_traces(c, order)
  return sum(((-1) ** (k + 1)) * t / k for k, t in enumerate(traces, start=1))


def mec_loss(z1: jax.Array, z2: jax.Array, *, lamda_inv, order: int = 4) -> jax.Array:
  """One pairing of the official MEC training loss.

      mec_loss = -(lamda_inv / m) · Tr Σ_{k=1..order} (-1)^(k+1) (ẑ1 ẑ2ᵀ / lamda_inv)ᵏ / k

  Args:
    z1, z2: (m, d) embeddings of two views (rows are samples; the global batch). Rows are
      L2-normalised here. The function is symmetric in its two arguments.
    lamda_inv: ``1 / lambda = m * eps² / d`` (scalar, may be traced: it is warmed up).
    order: number of Taylor terms (official: 4).

  Returns:
    A scalar. At order 1 it is minus the mean cosine similarity of the m row pairs; order k
    is weighted by ``lambda^(k-1)``. The m x m or d x d form is chosen by shape.
  """
  m, _ = _check_pair(z1, z2)
  return -(lamda_inv / m) * taylor_log_trace(correlation(z1, z2, lamda_inv), order)


def mec_logdet(z1: jax.Array, z2: jax.Array, *, lamda_inv) -> jax.Array:
  """The exact objective the series approximates, ``-(lamda_inv / m) · log|det(I + C)|``.

      C = ẑ1 ẑ2ᵀ / lamda_inv   (m x m);   det(I_m + C) = det(I_d + ẑ1ᵀ ẑ2 / lamda_inv)

  By Sylvester's identity the smaller of the two determinants is taken (``correlation``):
  d x d when d < m, m x m otherwise; the value is the same.

  ``C`` of the official MEC pairing (teacher of one view, online prediction of the other) is
  not symmetric, so ``det(I + C)`` is real but not positive by construction. It is kept as
  it is, not symmetrised: its series is the official Taylor loss term for term (a
  symmetrised ``(C + Cᵀ)/2`` has the same trace but different higher powers), and it is the
  paper's ``logdet(I + lam Z1ᵀ Z2)``, equally non-symmetric. ``slogdet`` gives
  ``log|det|``, which equals ``logdet(I + C)`` whenever ``det > 0``; that holds whenever
  ``||C||_2 < 1`` (every eigenvalue of C then has ``|λ| < 1``), and always when the two views
  agree (``C = ẑ ẑᵀ / lamda_inv`` is PSD). Should ``det`` cross 0, the loss is ``+inf`` there
  (``-log|det| -> +inf``), a barrier the gradient ``-(lamda_inv/m) (I + C)^-T`` pushes away
  from, and on the far side the value is that of ``|det|``. Unlike the truncated series
  (unbounded below once ``||C||_2 > 1``) the objective is bounded below for any lamda_inv:
  rows are unit-norm, so ``σ_i(C) <= m / lamda_inv`` and ``|det(I + C)| <= Π (1 + σ_i(C))``.

  Args:
    z1, z2: (m, d) embeddings (rows L2-normalised here).
    lamda_inv: scalar ``1 / lambda`` (may be traced).
  Returns:
    A scalar. Its expansion to order n is ``mec_loss(z1, z2, order=n)``.
  """
  m, _ = _check_pair(z1, z2)
  c = correlation(z1, z2, lamda_inv)
  _, logabsdet = jnp.linalg.slogdet(jnp.eye(c.shape[0], dtype=c.dtype) + c)
  return -(lamda_inv / m) * logabsdet


OBJECTIVES = ("taylor", "logdet")


def mec_objective(z1: jax.Array, z2: jax.Array, *, lamda_inv, order: int = 4,
                  objective: str = "taylor") -> jax.Array:
  """``mec_loss`` (``objective='taylor'``, the official order-``order`` series) or
  ``mec_logdet`` (``'logdet'``, exact and bounded) of one (m, d) pair; a scalar."""
  if objective == "taylor":
    return mec_loss(z1, z2, lamda_inv=lamda_inv, order=order)
  if objective == "logdet":
    return mec_logdet(z1, z2, lamda_inv=lamda_inv)
  raise ValueError(f"objective={objective!r}: expected one of {OBJECTIVES}")


def adapt_lamda_scale(scale, c_norm, bound: float):
  """The adaptive ``lamda_inv`` rule (``config.mec.adapt_bound``), one step:

      scale_{t+1} = max(1, scale_t · ||C_t||_2 / bound)

  where step t used ``lamda_inv_t = scale_t · schedule(t)`` and measured ``||C_t||_2``.
  ``C`` scales as ``1 / lamda_inv``, so on the same embeddings step t+1 would sit exactly at
  ``bound`` when the rule raises the scale; when the norm falls below the bound the scale
  relaxes toward 1, so ``lamda_inv`` never drops below the configured (warmed-up) value.
  Scalars in, a scalar out (no gradient)."""
  return jax.lax.stop_gradient(jnp.maximum(1.0, scale * c_norm / bound))


def mec_spectral_norm(z1: jax.Array, z2: jax.Array, *, lamda_inv,
                      iterations: int = 30, exact_below: int = 512) -> jax.Array:
  """``||C||_2`` of the m x m ``C = ẑ1 ẑ2ᵀ / lamda_inv`` (the Taylor series diverges at 1).

  When d < m, ``ẑ = Q R`` (thin QR) gives ``||ẑ1 ẑ2ᵀ||_2 = ||R1 R2ᵀ||_2``, a d x d problem.
  Exact (eigenvalues of ``MᵀM``) when that matrix is at most ``exact_below`` wide; otherwise
  a power-iteration estimate, a lower bound that tightens with ``iterations``. A logged
  monitor: no gradient flows through it.
  """
  m, d = _check_pair(z1, z2)
  a = jax.lax.stop_gradient(l2_normalize(as_float(z1)))
  b = jax.lax.stop_gradient(l2_normalize(as_float(z2)))
  if d < m:
    a, b = jnp.linalg.qr(a, mode="r"), jnp.linalg.qr(b, mode="r")
  c = (a @ b.T) / lamda_inv
  gram = c.T @ c
  if gram.shape[0] <= exact_below:
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], 0.0))
  v = jnp.ones((gram.shape[0],), gram.dtype) / jnp.sqrt(gram.shape[0])

  def body(_, v):
    w = gram @ v
    return w / jnp.maximum(jnp.linalg.norm(w), 1e-30)

  v = jax.lax.fori_loop(0, iterations, body, v)
  return jnp.sqrt(jnp.maximum(v @ (gram @ v), 0.0))
