"""SimCLR's NT-Xent (normalised temperature-scaled cross-entropy) over the global batch.

Notation: ``N`` rows per view (the global batch), ``2N`` anchors. The official code
(``google-research/simclr``, ``objective.add_contrastive_loss``) returns
``mean(loss_a + loss_b)``, the *sum* of the two views' means, i.e. twice the value here; this
is the paper's ``1/(2N) Σ`` over all anchors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mecjax.losses.mec import as_float, l2_normalize


def infonce_loss(z1: jax.Array, z2: jax.Array, *, temperature: float) -> jax.Array:
  """``mean_{a<2N} [ logsumexp_{j≠a} s_aj - s_a,pos(a) ]``, ``s = ẑ ẑᵀ / temperature``.

  ``ẑ = [ẑ1; ẑ2]`` (2N, d) stacks the row-normalised views; the positive of row ``a`` is the
  other view of the same sample (``a ± N``); each anchor has ``2N - 2`` negatives, and its
  self-similarity is excluded from the softmax.

  Args:
    z1, z2: (N, d) projections of the two views (normalised here).
    temperature: ``tau``.
  Returns:
    A scalar.
  """
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(f"expected two (N, d) arrays of one shape, got {z1.shape} and {z2.shape}")
  a, b = l2_normalize(as_float(z1)), l2_normalize(as_float(z2))
  z = jnp.concatenate([a, b], axis=0)
  logits = z @ z.T / temperature
  # The positive logit from the row pairs (both halves share it) instead of gathering the
  # shifted diagonal of the (2N, 2N) matrix: plain elementwise ops on the sharded batch.
  positive = jnp.sum(a * b, axis=-1) / temperature
  positive = jnp.concatenate([positive, positive])
  not_self = ~jnp.eye(z.shape[0], dtype=bool)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1, where=not_self) - positive)
