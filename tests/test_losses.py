"""MEC losses against a float64 numpy transliteration of the official code (xinliu20/MEC,
main_pretrain.py: loss_func and the training-loss scaling)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mecjax.losses import mec_logdet, mec_loss, mec_spectral_norm
from mecjax.losses import mec as mec_lib


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def official_trace(p, z, lamda_inv, order=4):
  """loss_func of the official code: the m x m series, power by power, then the trace."""
  c = _normalize(p) @ _normalize(z).T / lamda_inv
  power, total = c, np.zeros_like(c)
  for k in range(1, order + 1):
    if k > 1:
      power = power @ c
    total = total + power / k if (k + 1) % 2 == 0 else total - power / k
  return np.trace(total)


def official_pair_loss(p, z, lamda_inv, order=4):
  """One pairing, scaled as the official training loss scales it: -(lamda_inv / m) T."""
  return -lamda_inv / p.shape[0] * official_trace(p, z, lamda_inv, order)


def pair(rng, m, d, noise=0.5):
  a = rng.normal(size=(m, d))
  return a, a + noise * rng.normal(size=(m, d))


SHAPES = [(8, 64), (64, 8), (32, 32), (33, 17)]


@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 8])
def test_mec_loss_matches_official_float64(m, d, order):
  rng = np.random.default_rng(m * 100 + d + order)
  a, b = pair(rng, m, d)
  lamda_inv = m * 64 / max(d, 1) if m <= d else m * 4 / d
  want = official_pair_loss(a, b, lamda_inv, order)
  with jax.enable_x64(True):
    got = float(mec_loss(jnp.asarray(a), jnp.asarray(b), lamda_inv=lamda_inv, order=order))
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


@pytest.mark.parametrize("m,d", [(256, 64), (64, 256)])
def test_mec_loss_float32_within_1e5(m, d):
  rng = np.random.default_rng(3)
  a, b = pair(rng, m, d, noise=0.3)
  lamda_inv = m * 64 / d
  want = official_pair_loss(a, b, lamda_inv)
  got = float(mec_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                       lamda_inv=lamda_inv))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mec_loss_is_symmetric_and_jittable_with_traced_lamda():
  rng = np.random.default_rng(1)
  a, b = (jnp.asarray(x, jnp.float32) for x in pair(rng, 16, 48))
  f = jax.jit(lambda x, y, li: mec_loss(x, y, lamda_inv=li))
  np.testing.assert_allclose(float(f(a, b, 3.0)), float(f(b, a, 3.0)), rtol=1e-6)
  assert float(f(a, b, 3.0)) != pytest.approx(float(f(a, b, 6.0)))


def test_order_one_is_minus_mean_cosine():
  rng = np.random.default_rng(2)
  a, b = pair(rng, 40, 24)
  cos = np.mean(np.sum(_normalize(a) * _normalize(b), axis=1))
  with jax.enable_x64(True):
    for lamda_inv in (0.5, 7.0):
      got = float(mec_loss(jnp.asarray(a), jnp.asarray(b), lamda_inv=lamda_inv, order=1))
      np.testing.assert_allclose(got, -cos, rtol=1e-12)


def test_series_approaches_logdet_when_norm_below_one():
  rng = np.random.default_rng(4)
  a, b = pair(rng, 24, 40, noise=0.2)
  with jax.enable_x64(True):
    a, b = jnp.asarray(a), jnp.asarray(b)
    lamda_inv = 40.0
    assert float(mec_spectral_norm(a, b, lamda_inv=lamda_inv)) < 0.9
    exact = float(mec_logdet(a, b, lamda_inv=lamda_inv))
    errors = [abs(float(mec_loss(a, b, lamda_inv=lamda_inv, order=n)) - exact)
              for n in (1, 2, 4, 8, 16)]
  assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-6 * abs(exact)


@pytest.mark.parametrize("m,d", [(12, 30), (30, 12)])
def test_mec_logdet_matches_numpy(m, d):
  rng = np.random.default_rng(5)
  a, b = pair(rng, m, d)
  lamda_inv = 9.0
  c = _normalize(a) @ _normalize(b).T / lamda_inv
  sign, logabsdet = np.linalg.slogdet(np.eye(m) + c)
  assert sign > 0
  with jax.enable_x64(True):
    got = float(mec_logdet(jnp.asarray(a), jnp.asarray(b), lamda_inv=lamda_inv))
  np.testing.assert_allclose(got, -lamda_inv / m * logabsdet, rtol=1e-10)


def test_batch_and_feature_forms_have_equal_traces():
  rng = np.random.default_rng(6)
  a, b = (_normalize(x) for x in pair(rng, 20, 9))
  with jax.enable_x64(True):
    small = mec_lib.power_traces(jnp.asarray(a.T @ b / 3.0), 7)
    big = mec_lib.power_traces(jnp.asarray(a @ b.T / 3.0), 7)
    direct = [np.trace(np.linalg.matrix_power(a @ b.T / 3.0, k)) for k in range(1, 8)]
  np.testing.assert_allclose(np.array(small), direct, rtol=1e-10)
  np.testing.assert_allclose(np.array(big), direct, rtol=1e-10)


def test_gradient_matches_power_by_power_series():
  rng = np.random.default_rng(7)
  a, b = pair(rng, 16, 40)

  def naive(x, y, lamda_inv=5.0, order=4):
    c = mec_lib.l2_normalize(x) @ mec_lib.l2_normalize(y).T / lamda_inv
    power, total = c, jnp.zeros_like(c)
    for k in range(1, order + 1):
      if k > 1:
        power = power @ c
      total = total + ((-1) ** (k + 1)) * power / k
    return -lamda_inv / x.shape[0] * jnp.trace(total)

  with jax.enable_x64(True):
    x, y = jnp.asarray(a), jnp.asarray(b)
    got = jax.grad(lambda x, y: mec_loss(x, y, lamda_inv=5.0), argnums=(0, 1))(x, y)
    want = jax.grad(naive, argnums=(0, 1))(x, y)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("m,d", [(64, 32), (32, 64)])
def test_spectral_norm_exact_for_small_forms(m, d):
  rng = np.random.default_rng(8)
  a, b = pair(rng, m, d, noise=1.0)
  want = np.linalg.norm(_normalize(a) @ _normalize(b).T / 2.0, 2)
  got = float(mec_spectral_norm(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                lamda_inv=2.0))
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_spectral_norm_power_iteration_is_a_tight_lower_bound():
  rng = np.random.default_rng(10)
  a, b = pair(rng, 96, 48, noise=0.3)   # correlated views: a clear top singular value
  want = np.linalg.norm(_normalize(a) @ _normalize(b).T / 2.0, 2)
  got = float(mec_spectral_norm(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                lamda_inv=2.0, exact_below=0))
  assert got <= want * (1 + 1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-3)


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match=r"\(4, 8\) and \(4, 9\)"):
    mec_loss(jnp.ones((4, 8)), jnp.ones((4, 9)), lamda_inv=1.0)
  with pytest.raises(ValueError, match="order"):
    mec_loss(jnp.ones((4, 8)), jnp.ones((4, 8)), lamda_inv=1.0, order=0)


def test_bfloat16_inputs_are_reduced_in_float32():
  rng = np.random.default_rng(9)
  a, b = pair(rng, 32, 16)
  out = mec_loss(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16), lamda_inv=2.0)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(float(out), official_pair_loss(a, b, 2.0), rtol=2e-2)
