"""E2MC's criterion against a float64 numpy transliteration of the official code
(``deepc94/e2mc`` main_vicreg_ent_ft.py / main_swav_ent_ft.py: ``_get_ent_and_cov_loss``,
``m_spacings_estimator``, ``_get_cov_loss``), written here independently."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special as sp_special

from mecjax.losses import e2mc_loss, e2mc_terms, m_spacings_entropy
from test_objectives import f32, f64, sharded_and_single


# ----------------------------------------------------------------------------- references

def official_m_spacings(x, eps=1e-7):
  n = x.shape[0]
  m = round(math.sqrt(n))
  x = np.sort(x, axis=0)
  x = x[m:] - x[:n - m]
  x = x * (n + 1) / m
  return np.log(x + eps).sum(axis=0) / (n - m)


def official_off_diagonal(c):
  n, m = c.shape
  return c.flatten()[:-1].reshape(n - 1, n + 1)[:, 1:].flatten()


def official_ent_and_cov(x, transform, eps=1e-7):
  if transform == "sigmoid":
    h = 1.0 / (1.0 + np.exp(-x))
  else:
    h = 0.5 * (1 + sp_special.erf(x / math.sqrt(2)))
  h = h - h.mean(axis=0)
  ent = official_m_spacings(h, eps)
  cov = h.T @ h / (x.shape[0] - 1)
  return ent, (official_off_diagonal(cov) ** 2).sum() / x.shape[1]


def official_e2mc(x, y, beta, gamma, transform, eps=1e-7):
  ent_x, cov_x = official_ent_and_cov(x, transform, eps)
  ent_y, cov_y = official_ent_and_cov(y, transform, eps)
  ent = ent_x.mean() / 2 + ent_y.mean() / 2
  cov = cov_x + cov_y
  return gamma * cov - beta * ent, ent, cov


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("n,d,scale", [(64, 16, 1.0), (37, 5, 3.0), (256, 8, 0.2)])
def test_m_spacings_matches_official_float64(n, d, scale):
  x = scale * np.random.default_rng(n + d).normal(size=(n, d))
  got = f64(m_spacings_entropy, x)
  assert got.shape == (d,)
  np.testing.assert_allclose(got, official_m_spacings(x), rtol=1e-9)
  np.testing.assert_allclose(f64(m_spacings_entropy, x, eps=1e-3),
                             official_m_spacings(x, eps=1e-3), rtol=1e-9)
  np.testing.assert_allclose(f32(m_spacings_entropy, x), official_m_spacings(x), rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize("transform", ["sigmoid", "gaussian_cdf"])
@pytest.mark.parametrize("n,d,beta,gamma", [(64, 16, 1000.0, 100.0), (50, 7, 0.001, 0.01),
                                            (128, 32, 1.0, 25.0)])
def test_e2mc_matches_official_float64(transform, n, d, beta, gamma):
  rng = np.random.default_rng(n * d)
  x, y = 2.0 * rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5
  loss, terms = f64(e2mc_loss, x, y, beta=beta, gamma=gamma, transform=transform)
  want, ent, cov = official_e2mc(x, y, beta, gamma, transform)
  np.testing.assert_allclose(loss, want, rtol=1e-9)
  np.testing.assert_allclose(terms["entropy"], ent, rtol=1e-9)
  np.testing.assert_allclose(terms["cov"], cov, rtol=1e-9)
  loss32, _ = f32(e2mc_loss, x, y, beta=beta, gamma=gamma, transform=transform)
  np.testing.assert_allclose(loss32, want, rtol=1e-4, atol=1e-4 * (beta + gamma))


def test_unknown_transform_is_refused():
  x = jnp.ones((8, 2))
  with pytest.raises(ValueError, match="transform='tanh'"):
    e2mc_loss(x, x, beta=1.0, gamma=1.0, transform="tanh")


# ----------------------------------------------------------------------------- properties

@pytest.mark.parametrize("n", [100, 400, 1024])
def test_evenly_spaced_points_on_the_unit_interval_have_entropy_near_zero(n):
  # The uniform distribution on [0, 1] has differential entropy 0; the estimator of evenly
  # spaced points gives log((N+1)/(N-1)) ~ 2/N.
  x = np.linspace(0.0, 1.0, n)[:, None]
  h = float(f64(m_spacings_entropy, x)[0])
  assert abs(h) < 3.0 / n
  # Squeezing the points into [0, 1/4] lowers the entropy by log 4.
  np.testing.assert_allclose(float(f64(m_spacings_entropy, x / 4)[0]), h - math.log(4),
                             atol=1e-6)


def test_gaussian_samples_reach_their_differential_entropy():
  x = np.random.default_rng(3).normal(size=(20000, 3))
  h = f64(m_spacings_entropy, x)
  # 0.5 log(2 pi e) = 1.4189; the m-spacings estimate is biased low at finite N (by ~0.03
  # here: the spacings of the tails are averaged over a window of w = 141 samples).
  true = 0.5 * math.log(2 * math.pi * math.e)
  assert np.all(h < true) and np.all(h > true - 0.06), h


def test_gradient_through_the_sort_matches_finite_differences():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(30, 4))   # continuous samples: no ties

  def f(v):
    return jnp.sum(jnp.asarray([1.0, -2.0, 0.5, 3.0]) * m_spacings_entropy(v))

  with jax.enable_x64(True):
    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    h = 1e-6
    for i, j in [(0, 0), (5, 1), (17, 2), (29, 3), (11, 0)]:
      e = np.zeros_like(x)
      e[i, j] = h
      fd = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * h)
      np.testing.assert_allclose(g[i, j], fd, rtol=1e-5, atol=1e-8)
  assert np.count_nonzero(g) > 0


def test_whole_criterion_gradient_matches_finite_differences():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(25, 3)), rng.normal(size=(25, 3))

  def f(a):
    return e2mc_loss(a, jnp.asarray(y), beta=2.0, gamma=3.0, transform="gaussian_cdf")[0]

  with jax.enable_x64(True):
    g = np.asarray(jax.grad(f)(jnp.asarray(x)))
    h = 1e-6
    for i, j in [(0, 0), (12, 1), (24, 2)]:
      e = np.zeros_like(x)
      e[i, j] = h
      fd = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * h)
      np.testing.assert_allclose(g[i, j], fd, rtol=1e-5, atol=1e-8)


def test_spreading_the_embedding_lowers_the_loss():
  # A collapsed embedding (every sample near one point) scores worse than a spread one.
  rng = np.random.default_rng(6)
  spread = rng.normal(size=(128, 8))
  collapsed = 0.01 * spread + 0.3
  loss = lambda z: float(f64(e2mc_loss, z, z, beta=1.0, gamma=1.0, transform="sigmoid")[0])
  assert loss(spread) < loss(collapsed)
  # Correlated dimensions raise the covariance term.
  corr = np.repeat(spread[:, :1], 8, axis=1) + 0.1 * spread
  terms = lambda z: f64(e2mc_terms, z, z, transform="sigmoid")
  assert terms(corr)["cov"] > 10 * terms(spread)["cov"]


def test_sharded_equals_single_device():
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(64, 16)), rng.normal(size=(64, 16))

  def f(a, b):
    return e2mc_loss(a, b, beta=10.0, gamma=1.0, transform="sigmoid")[0]

  got, want = sharded_and_single(f, x, y)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  np.testing.assert_allclose(float(got), official_e2mc(x, y, 10.0, 1.0, "sigmoid")[0],
                             rtol=1e-5)
  g_sharded, g_single = sharded_and_single(jax.grad(f), x, y)
  np.testing.assert_allclose(np.asarray(g_sharded), np.asarray(g_single), rtol=1e-5,
                             atol=1e-6 * np.abs(np.asarray(g_single)).max())


def test_bfloat16_inputs_reduce_in_float32():
  x = jnp.asarray(np.random.default_rng(8).normal(size=(32, 4)), jnp.bfloat16)
  assert m_spacings_entropy(x).dtype == jnp.float32
  assert e2mc_loss(x, x, beta=1.0, gamma=1.0, transform="sigmoid")[0].dtype == jnp.float32
