"""MUSIC, Multi-Segmental Informational Coding (Niu et al.), as the official code computes it.

The loss is that of the authors' code (``niuchuangnn/IMSVD``, ``imsvd.py``, ``IMSVD.forward``).
Notation: ``N`` rows (the global batch), ``D = S · D_S`` embedding width, split into ``S``
segments of ``D_S`` units; ``q`` the segment-wise softmax of an embedding divided by the
temperature, clamped below at ``1e-8`` (``torch.clamp`` after ``torch.softmax``):

    P     = q1ᵀ q2 / N                                             (D x D joint distribution)
    L_dia = Σ_d P_dd log P_dd / S                                  (the D diagonal entries)
    L_off = Σ_{s≠s'} Σ_{i,j} P_(s,i)(s',j) log P_(s,i)(s',j) / (S(S-1))   (off-diagonal blocks)
    L_ti  = -mean_{n,s} log Σ_i q1[n,s,i] q2[n,s,i]
    loss  = L_dia + L_off + invariance_weight · L_ti

Entries of the diagonal blocks off their diagonal are not used. Lower bounds, each attained
by the ideal code (one-hot segments, the two views agree, segments uniform over their units
and pairwise independent): ``L_dia >= -ln D_S`` for ``D_S >= 3`` (the diagonal of a block
sums to at most 1, and ``Σ p log p`` over ``D_S`` cells of total ``c <= 1`` is at least
``c ln(c / D_S) >= -ln D_S`` there), ``L_off >= -2 ln D_S`` (each off-diagonal block is a
joint distribution over ``D_S²`` cells), ``L_ti >= 0`` (``q1 · q2 <= 1``), so
``loss >= -3 ln D_S`` at weight 1. The clamp moves each term by at most
``O(D_S² · 1e-8 · ln 1e8)`` (the cells it lifts off zero).

The official code takes ``L_ti`` on each worker's local batch and reports the local mean; with
equal shards the mean over the global batch has the same gradient. ``P`` is built on the
gathered global batch, as here.

``music_joint`` returns the ``S`` diagonal blocks of ``P``: per segment, the joint distribution
of the symbol view 1 takes and the symbol view 2 takes (the MUSIC paper's picture of ``P``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mecjax.losses.mec import as_float

# Official ``torch.clamp(softmax, 1e-8)``: keeps every ``log`` finite (P >= 1e-16).
PROB_FLOOR = 1e-8


def segment_softmax(x: jax.Array, segment_size: int, temperature: float = 1.0) -> jax.Array:
  """(N, D) -> (N, S, D_S): ``max(softmax(x_s / temperature), 1e-8)`` within each segment."""
  n, d = x.shape
  if d % segment_size:
    raise ValueError(f"width {d} is not a multiple of segment_size {segment_size}")
  logits = as_float(x).reshape(n, d // segment_size, segment_size) / temperature
  return jnp.maximum(jax.nn.softmax(logits, axis=-1), PROB_FLOOR)


def _joint(q1: jax.Array, q2: jax.Array) -> jax.Array:
  """(N, S, D_S) segment softmaxes of the two views -> P as (S, D_S, S, D_S): ``q1ᵀ q2 / N``."""
  n, s, k = q1.shape
  # A sum over the (sharded) batch axis: under jit this is the global-batch joint distribution.
  return (q1.reshape(n, s * k).T @ q2.reshape(n, s * k) / n).reshape(s, k, s, k)


def music_joint(x1: jax.Array, x2: jax.Array, *, segment_size: int,
                temperature: float = 1.0) -> jax.Array:
  """Per segment, the joint distribution of the two views' symbols: the diagonal blocks of P.

      q_v    = max(softmax(x_v[:, s] / temperature), 1e-8)          (N, S, D_S), v = 1, 2
      P[s]   = Σ_n q1[n, s]ᵀ q2[n, s] / N                           (S, D_S, D_S)

  ``P[s, i, j]`` is how often (softly) view 1 takes symbol ``i`` of segment ``s`` while view 2
  takes ``j``; each ``P[s]`` sums to 1 (up to the clamp), its row sums are the mean of
  ``q1[:, s]`` over the batch and its column sums the mean of ``q2[:, s]``. The ideal code puts
  ``1 / D_S`` on the diagonal and 0 elsewhere. The same ``P`` as ``music_terms`` uses.

  Args:
    x1, x2: (N, D) embeddings of the two views, ``D`` a multiple of ``segment_size``.
    segment_size: ``D_S``; temperature: the softmax temperature (as in ``music_terms``).

  Returns:
    (S, D_S, D_S), float32 (float64 under x64 with float64 inputs).
  """
  if x1.ndim != 2 or x1.shape != x2.shape:
    raise ValueError(f"MUSIC expects two (N, D) embeddings of one shape, got {x1.shape} and "
                     f"{x2.shape}")
  p = _joint(segment_softmax(x1, segment_size, temperature),
             segment_softmax(x2, segment_size, temperature))
  segments = jnp.arange(p.shape[0])
  # Advanced indices split by a slice go first: (S, D_S, D_S), block s of P at [s].
  return p[segments, :, segments, :]


def music_terms(x1: jax.Array, x2: jax.Array, *, segment_size: int, temperature: float = 1.0,
                invariance_weight: float = 1.0) -> dict[str, jax.Array]:
  """The MUSIC loss and its three terms (module docstring for the equations).

  Args:
    x1, x2: (N, D) projector outputs of the two views (the global batch), ``D`` a multiple of
      ``segment_size`` with at least two segments.
    segment_size: ``D_S``, units per segment (official ``bin_size``).
    temperature: softmax temperature (official ``t``, default 1).
    invariance_weight: ``lambda``, the weight of ``L_ti`` in the total (official ``ti_coeff``).

  Returns:
    ``{"loss", "diagonal", "off_diagonal", "invariance"}``: scalars; the terms are unweighted
    (``loss = diagonal + off_diagonal + invariance_weight * invariance``).
  """
  if x1.ndim != 2 or x1.shape != x2.shape:
    raise ValueError(f"MUSIC expects two (N, D) embeddings of one shape, got {x1.shape} and "
                     f"{x2.shape}")
  d = x1.shape[1]
  segments = d // segment_size
  if segments < 2:
    # L_off divides by S(S-1): the official code returns NaN for a single segment.
    raise ValueError(f"MUSIC needs at least two segments, got width {d} / {segment_size}")
  q1 = segment_softmax(x1, segment_size, temperature)
  q2 = segment_softmax(x2, segment_size, temperature)

  invariance = -jnp.mean(jnp.log(jnp.sum(q1 * q2, axis=-1)))

  p = _joint(q1, q2)                                   # (S, D_S, S, D_S), as music_joint
  diag = jnp.diagonal(p.reshape(d, d))
  diagonal = jnp.sum(diag * jnp.log(diag)) / segments
  plogp = p * jnp.log(p)
  off_block = ~jnp.eye(segments, dtype=bool)[:, None, :, None]
  off_diagonal = jnp.sum(jnp.where(off_block, plogp, 0.0)) / (segments * (segments - 1))

  loss = diagonal + off_diagonal + invariance_weight * invariance
  return {"loss": loss, "diagonal": diagonal, "off_diagonal": off_diagonal,
          "invariance": invariance}


def music_loss(x1: jax.Array, x2: jax.Array, *, segment_size: int, temperature: float = 1.0,
               invariance_weight: float = 1.0) -> jax.Array:
  """``L_dia + L_off + invariance_weight · L_ti`` of (N, D) embeddings; a scalar.

  See ``music_terms`` (arguments) and the module docstring (equations, bound ``-3 ln D_S``).
  """
  return music_terms(x1, x2, segment_size=segment_size, temperature=temperature,
                     invariance_weight=invariance_weight)["loss"]
