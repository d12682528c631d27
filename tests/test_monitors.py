"""Collapse monitors on codes whose answer is known."""

import jax.numpy as jnp
import numpy as np

from mecjax.monitors import effective_rank, embedding_std


def test_effective_rank_of_isotropic_and_collapsed_codes():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 16))
  q, _ = np.linalg.qr(x - x.mean(0))               # orthonormal, zero-mean columns
  iso = jnp.asarray(q * 8.0, jnp.float32)          # 16 equal singular values
  np.testing.assert_allclose(float(effective_rank(iso)), 16.0, rtol=1e-4)
  line = jnp.asarray(np.outer(rng.normal(size=64), rng.normal(size=16)), jnp.float32)
  np.testing.assert_allclose(float(effective_rank(line)), 1.0, rtol=1e-3)
  # The null direction of a centred batch (m < d) does not leak rounding noise in.
  wide = jnp.asarray(rng.normal(size=(32, 64)), jnp.float32)
  a, b = float(effective_rank(wide)), float(effective_rank(wide * (1 + 1e-7)))
  assert abs(a - b) < 1e-5 * a


def test_embedding_std_spread_and_collapsed():
  rng = np.random.default_rng(1)
  spread = jnp.asarray(rng.normal(size=(4096, 64)), jnp.float32)
  np.testing.assert_allclose(float(embedding_std(spread)), 1 / np.sqrt(64), rtol=0.02)
  same = jnp.ones((128, 64)) + 1e-3 * jnp.asarray(rng.normal(size=(128, 64)), jnp.float32)
  assert float(embedding_std(same)) < 1e-3
