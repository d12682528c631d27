"""MEC's bounded variants: the exact log-det objective (value and gradient against float64
numpy, both determinant forms) and the adaptive lamda_inv that keeps ||C||_2 under a bound."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from mecjax import configlib, losses, methods


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_logdet_loss(z1, z2, lamda_inv):
  """-(lamda_inv / m) log|det(I_m + ẑ1 ẑ2ᵀ / lamda_inv)|, always the m x m form."""
  m = z1.shape[0]
  c = _normalize(z1) @ _normalize(z2).T / lamda_inv
  _, logabsdet = np.linalg.slogdet(np.eye(m) + c)
  return -lamda_inv / m * logabsdet


def np_numeric_grad(f, x, h=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[idx] = h
    g[idx] = (f(x + e) - f(x - e)) / (2 * h)
  return g


def correlated_pair(rng, m, d, noise=0.5):
  a = rng.normal(size=(m, d))
  return a, a + noise * rng.normal(size=(m, d))


@pytest.mark.parametrize("m,d,lamda_inv", [(10, 24, 2.0), (24, 10, 3.0), (16, 16, 0.5)])
def test_logdet_value_and_gradient_match_float64_numpy(m, d, lamda_inv):
  # (10, 24): the m x m form; (24, 10): d x d (Sylvester); lamda_inv 0.5: ||C||_2 > 1, where
  # the series diverges and the log-det does not.
  rng = np.random.default_rng(m * 100 + d)
  z1, z2 = correlated_pair(rng, m, d)
  with jax.enable_x64(True):
    f = lambda a, b: losses.mec_logdet(a, b, lamda_inv=lamda_inv)
    value = float(f(jnp.asarray(z1), jnp.asarray(z2)))
    g1, g2 = jax.grad(f, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
  np.testing.assert_allclose(value, np_logdet_loss(z1, z2, lamda_inv), rtol=1e-12)
  np.testing.assert_allclose(np.asarray(g1), np_numeric_grad(
      lambda x: np_logdet_loss(x, z2, lamda_inv), z1), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(np.asarray(g2), np_numeric_grad(
      lambda x: np_logdet_loss(z1, x, lamda_inv), z2), rtol=1e-6, atol=1e-9)


def test_logdet_is_bounded_where_the_series_is_not():
  # The second view is the first rotated by 45 degrees: ẑ1ᵀ ẑ2 ~ (m/2) R has eigenvalues
  # ~ r e^(±i pi/4), where the order-4 term -Re(λ⁴)/4 = +r⁴/4 grows without bound, so the
  # series loss falls without bound as lamda_inv shrinks (r grows). The log-det stays above
  # -(lamda_inv/m) Σ log(1 + σ_i(C)) >= -lamda_inv log(1 + m/lamda_inv) (unit rows).
  m = 32
  angles = 2 * np.pi * np.arange(m) / m
  z1 = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  rot = np.array([[np.cos(np.pi / 4), -np.sin(np.pi / 4)], [np.sin(np.pi / 4), np.cos(np.pi / 4)]])
  z2 = z1 @ rot.T
  series, exact = [], []
  with jax.enable_x64(True):
    for lamda_inv in (8.0, 1.0, 0.1):
      series.append(float(losses.mec_loss(jnp.asarray(z1), jnp.asarray(z2),
                                          lamda_inv=lamda_inv)))
      exact.append(float(losses.mec_logdet(jnp.asarray(z1), jnp.asarray(z2),
                                           lamda_inv=lamda_inv)))
      assert exact[-1] >= -lamda_inv * np.log(1 + m / lamda_inv)
      np.testing.assert_allclose(exact[-1], np_logdet_loss(z1, z2, lamda_inv), rtol=1e-12)
  assert series[0] > series[1] > series[2]
  assert series[2] < -1e4 and min(exact) > -2.0


def test_mec_objective_dispatches_and_refuses_unknown():
  rng = np.random.default_rng(4)
  z1, z2 = (jnp.asarray(x, jnp.float32) for x in correlated_pair(rng, 12, 20))
  assert float(losses.mec_objective(z1, z2, lamda_inv=4.0, objective="logdet")) == \
      pytest.approx(float(losses.mec_logdet(z1, z2, lamda_inv=4.0)))
  assert float(losses.mec_objective(z1, z2, lamda_inv=4.0, order=3)) == \
      pytest.approx(float(losses.mec_loss(z1, z2, lamda_inv=4.0, order=3)))
  with pytest.raises(ValueError, match="objective"):
    losses.mec_objective(z1, z2, lamda_inv=4.0, objective="exact")


def test_adaptive_lamda_inv_keeps_the_norm_under_the_bound():
  # Gradient descent on free embeddings with the order-4 series at a lamda_inv that puts
  # ||C||_2 near 3 (the cpu variant's failure at eps_d^2 0.12). Unadapted, the norm stays
  # past the radius and the loss runs away; adapted, from the second step on it stays
  # within 2% of the bound 0.9 or under it, so the series converges at every step.
  rng = np.random.default_rng(5)
  z1, z2 = (jnp.asarray(x, jnp.float32) for x in correlated_pair(rng, 64, 16, noise=0.3))
  base, bound = 64 * 0.03 / 16 * 16, 0.9

  def run(adapt, steps=60, lr=2.0):
    a, b, scale = z1, z2, jnp.float32(1.0)
    norms = []
    grad = jax.jit(jax.value_and_grad(
        lambda a, b, li: losses.mec_loss(a, b, lamda_inv=li), argnums=(0, 1)))
    for _ in range(steps):
      li = base * scale
      c_norm = float(losses.mec_spectral_norm(a, b, lamda_inv=li))
      norms.append(c_norm)
      loss, (ga, gb) = grad(a, b, li)
      a, b = a - lr * ga, b - lr * gb
      if adapt:
        scale = losses.adapt_lamda_scale(scale, c_norm, bound)
    return np.array(norms), float(loss), float(scale)

  plain, plain_loss, _ = run(False)
  adapted, adapted_loss, scale = run(True)
  assert plain[0] > 2.0 and plain.min() > 1.0
  assert adapted[1:].max() <= 1.02 * bound
  assert scale > 2.0
  # The rule itself: raise to bring the norm to the bound, relax toward 1, never below 1.
  assert float(losses.adapt_lamda_scale(2.0, 1.8, 0.9)) == pytest.approx(4.0)
  assert float(losses.adapt_lamda_scale(2.0, 0.45, 0.9)) == pytest.approx(1.0)
  assert float(losses.adapt_lamda_scale(1.0, 0.3, 0.9)) == 1.0


BATCH, SIZE = 16, 16


def build(variant, **mec):
  config = configlib.load(str(REPO / "configs" / "mec_cifar10.py"), variant)
  with config.unlocked():
    for k, v in mec.items():   # config.mec keys, or dotted paths from the config's root
      node, (*parents, leaf) = config, (k if "." in k else f"mec.{k}").split(".")
      for part in parents:
        node = node[part]
      node[leaf] = v
  run = methods.RunInfo(global_batch=BATCH, steps_per_epoch=4, total_steps=12)
  method = methods.get_method(config, run)
  params, state = method.init(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
  return method, params, state


def test_mec_method_keeps_the_scale_in_its_state_and_uses_it():
  method, params, state = build("smoke,adaptive", adapt_bound=1e-3)
  assert float(state["lamda_scale"]) == 1.0
  rng = np.random.default_rng(0)
  views = [jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32) for _ in range(2)]
  target = params
  step = jnp.int32(6)
  _, out = method.loss(params, state, target, views, step)
  c_norm = float(out.metrics["c_norm"])
  assert float(out.state["lamda_scale"]) == pytest.approx(max(1.0, c_norm / 1e-3), rel=1e-6)
  # The next step reads the scale: lamda_inv is the schedule times it.
  _, out2 = method.loss(params, out.state, target, views, step)
  assert float(out2.metrics["lamda_inv"]) == pytest.approx(
      float(method.lamda_inv(step)) * float(out.state["lamda_scale"]), rel=1e-6)
  assert float(out2.metrics["c_norm"]) == pytest.approx(1e-3, rel=1e-3)


def test_logdet_variant_trains_mec_on_the_exact_objective():
  # At the warm-up's start (8 x lamda_inv) ||C||_2 is small and the order-4 series is within
  # O(||C||^5) of the log-det; the variant computes the log-det, not the series.
  method, params, state = build("smoke,logdet")
  series, _, _ = build("smoke")
  assert "lamda_scale" not in state and method.config.mec.objective == "logdet"
  rng = np.random.default_rng(1)
  views = [jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32) for _ in range(2)]
  exact, out = method.loss(params, state, params, views, jnp.int32(0))
  approx, out_s = series.loss(params, state, params, views, jnp.int32(0))
  c = float(out.metrics["c_norm"])
  assert c < 0.5
  assert float(exact) != float(approx)
  assert abs(float(exact) - float(approx)) <= 2 * c ** 5 * float(out.metrics["lamda_inv"])


def test_bad_mec_keys_stop_with_one_line():
  with pytest.raises(configlib.ConfigError, match="mec.objective"):
    build("smoke", objective="exact")
  with pytest.raises(configlib.ConfigError, match="adapt_bound"):
    build("smoke", adapt_bound=-1.0)
  config = configlib.load(str(REPO / "configs" / "simclr_cifar10.py"), "smoke,mec")
  with config.unlocked():
    config.mec.adapt_bound = 0.9
  with pytest.raises(configlib.ConfigError, match="method 'mec'"):
    methods.get_method(config, methods.RunInfo(global_batch=16, steps_per_epoch=4,
                                                total_steps=12))


def test_weight_sharing_reuses_the_online_embeddings_as_the_teacher():
  # EMA momentum 0 throughout: the teacher is the online network, so the objective without
  # its second forward pass equals the one that runs the teacher on target = params, in value
  # and gradient, and the teacher's statistics are the online ones.
  shared, params, state = build("smoke", **{"ema.momentum": 0.0, "ema.final_momentum": 0.0})
  forward, _, _ = build("smoke", **{"ema.momentum": 0.0, "ema.final_momentum": 1e-9})
  assert shared.shares_weights and not forward.shares_weights
  rng = np.random.default_rng(2)
  views = [jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32) for _ in range(2)]
  grad = lambda m: jax.value_and_grad(
      lambda p: m.loss(p, state, params, views, jnp.int32(3)), has_aux=True)(params)
  (loss_s, out_s), g_s = grad(shared)
  (loss_f, out_f), g_f = grad(forward)
  np.testing.assert_allclose(float(loss_s), float(loss_f), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_f)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # The teacher's statistics where it runs (encoder and projector; it has no use for the
  # predictor's, which now follow the online ones too).
  teacher_part = lambda tree: {k: v for k, v in tree.items() if k != "predictor"}
  assert set(out_s.state["target_batch_stats"]) == {"encoder", "projector", "predictor"}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               teacher_part(out_s.state["target_batch_stats"]),
               teacher_part(out_f.state["target_batch_stats"]))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
               out_s.state["target_batch_stats"], out_s.state["batch_stats"])
