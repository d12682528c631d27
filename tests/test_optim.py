"""Optimisers, schedules and the EMA-target transformation, against hand-written updates."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mecjax import configlib, optim


def _params():
  return {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.3])}


def _grads(k):
  return {"w": jnp.full((2, 2), 0.1 * (k + 1)), "b": jnp.array([0.2, -0.1]) * (k + 1)}


def optim_cfg(**kw):
  c = configlib.base().optim
  c = ml_collections.ConfigDict(c.to_dict())
  c.update(kw)
  return c


def run(tx, steps=3):
  params = _params()
  state = tx.init(params)
  for k in range(steps):
    updates, state = tx.update(_grads(k), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_ema_target_follows_the_updated_parameters():
  sgd = optax.sgd(0.5)
  moms = [0.9, 0.8, 0.7]
  params, state = run(optax.chain(sgd, optim.ema_target(lambda k: jnp.array(moms)[k])))
  # By hand: target <- m target + (1 - m) (params after the update).
  p = {k: np.asarray(v) for k, v in _params().items()}
  t = {k: v.copy() for k, v in p.items()}
  for k in range(3):
    g = {n: np.asarray(v) for n, v in _grads(k).items()}
    p = {n: p[n] - 0.5 * g[n] for n in p}
    t = {n: moms[k] * t[n] + (1 - moms[k]) * p[n] for n in t}
  target = optim.target_params(state)
  for n in p:
    np.testing.assert_allclose(np.asarray(params[n]), p[n], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(target[n]), t[n], rtol=1e-6)


def test_zero_momentum_is_weight_sharing_and_none_without_ema():
  params, state = run(optax.chain(optax.sgd(0.1, momentum=0.9), optim.ema_target(0.0)))
  target = optim.target_params(state)
  for n in params:
    np.testing.assert_array_equal(np.asarray(target[n]), np.asarray(params[n]))
  _, plain = run(optax.sgd(0.1))
  assert optim.target_params(plain) is None


def test_target_is_found_inside_optax_wrappers():
  tx = optax.multi_transform({"a": optax.chain(optax.sgd(0.1), optim.ema_target(0.5)),
                              "b": optax.sgd(0.1)}, {"w": "a", "b": "b"})
  _, state = run(tx)
  target = optim.target_params(state)
  assert target is not None and "w" in target


def test_ema_target_needs_params():
  tx = optim.ema_target(0.9)
  state = tx.init(_params())
  with pytest.raises(ValueError, match="parameters"):
    tx.update(_grads(0), state)


def test_cosine_momentum_schedule():
  sched = optim.cosine_momentum(0.996, 100)
  np.testing.assert_allclose(float(sched(0)), 0.996, rtol=1e-7)
  np.testing.assert_allclose(float(sched(50)), 0.998, rtol=1e-7)
  np.testing.assert_allclose(float(sched(100)), 1.0, rtol=1e-7)
  # Official: 1 + (0.996 - 1) (1 + cos(pi k / K)) / 2.
  for k in (7, 33, 91):
    want = 1 + (0.996 - 1) * (1 + math.cos(math.pi * k / 100)) / 2
    np.testing.assert_allclose(float(sched(k)), want, rtol=1e-7)


def test_warmup_cosine_schedule():
  lr = optim.warmup_cosine(2.0, total_steps=100, warmup_steps=10)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(5)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10)), 2.0, rtol=1e-6)
  np.testing.assert_allclose(float(lr(55)), 1.0, rtol=1e-5)   # cosine midpoint
  np.testing.assert_allclose(float(lr(100)), 0.0, atol=1e-7)
  np.testing.assert_allclose(float(optim.warmup_cosine(2.0, 100, 0, 0.2)(100)), 0.2,
                             rtol=1e-5)
  assert optim.scaled_lr(0.5, 1024) == 2.0


def test_sgd_has_pytorch_semantics():
  lr, mom, wd = 0.1, 0.9, 0.01
  params, _ = run(optim.make_optimizer(optim_cfg(name="sgd", momentum=mom, weight_decay=wd),
                                       lr))
  # torch.optim.SGD: d = g + wd p; buf = mom buf + d; p -= lr buf.
  p = {k: np.asarray(v) for k, v in _params().items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  for k in range(3):
    for n in p:
      d = np.asarray(_grads(k)[n]) + wd * p[n]
      buf[n] = mom * buf[n] + d
      p[n] = p[n] - lr * buf[n]
  for n in p:
    np.testing.assert_allclose(np.asarray(params[n]), p[n], rtol=1e-6)


def test_lars_excludes_1d_parameters_from_adaptation_and_decay():
  cfg = optim_cfg(name="lars", weight_decay=0.1, exclude_1d=True, momentum=0.0)
  params = _params()
  tx = optim.make_optimizer(cfg, 0.5)
  updates, _ = tx.update(_grads(0), tx.init(params), params)
  # Bias: plain SGD step (no trust ratio, no decay).
  np.testing.assert_allclose(np.asarray(updates["b"]), -0.5 * np.asarray(_grads(0)["b"]),
                             rtol=1e-6)
  # Weight: decayed and scaled by eta ||w|| / ||g + wd w||.
  w, g = np.asarray(params["w"]), np.asarray(_grads(0)["w"])
  d = g + 0.1 * w
  want = -0.5 * 0.001 * np.linalg.norm(w) / np.linalg.norm(d) * d
  np.testing.assert_allclose(np.asarray(updates["w"]), want, rtol=1e-5)


def _solo_lars_reference(params, grads, lrs, *, eta, wd, mom, exclude_1d, eps=1e-8):
  """float64 transliteration of solo-learn's LARS step with clip_lr (PyTorch Lightning
  Bolts' LARS): per tensor, d = g; if adapted and ||p||, ||g|| > 0:
  lars_lr = min(eta ||p|| / (||g|| + wd ||p|| + eps) / lr, 1), d = lars_lr (g + wd p);
  buf = mom buf + d (buf = d at the first step); p -= lr buf."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  buf = {}
  for g_step, lr in zip(grads, lrs):
    for n in p:
      g = np.asarray(g_step[n], np.float64)
      d = g
      if p[n].ndim != 1 or not exclude_1d:
        pn, gn = np.linalg.norm(p[n]), np.linalg.norm(g)
        if pn != 0 and gn != 0:
          lars_lr = min(eta * pn / (gn + pn * wd + eps) / lr, 1.0)
          d = (g + wd * p[n]) * lars_lr
      buf[n] = d.copy() if n not in buf else mom * buf[n] + d
      p[n] = p[n] - lr * buf[n]
  return p


@pytest.mark.parametrize("exclude_1d", [True, False])
def test_clipped_lars_matches_solo_learn(exclude_1d):
  # Gradients of very different sizes, so that some steps take the SGD branch (trust ratio
  # over lr clipped to 1) and others the trust ratio; a rising then falling lr; a zero
  # gradient (no adaptation and no decay for that tensor at that step).
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.3]),
            "k": jnp.array([[0.2, 0.0, -0.4]])}
  grads = [{"w": jnp.full((2, 2), 0.01), "b": jnp.array([0.2, -0.1]),
            "k": jnp.zeros((1, 3))},
           {"w": jnp.array([[3.0, -1.0], [2.0, 0.5]]), "b": jnp.array([0.05, 0.3]),
            "k": jnp.array([[1.0, 2.0, -0.5]])},
           {"w": jnp.array([[0.02, 0.01], [-0.03, 0.0]]), "b": jnp.array([-0.4, 0.1]),
            "k": jnp.array([[0.001, 0.002, 0.0]])},
           {"w": jnp.array([[-5.0, 4.0], [1.0, 2.0]]), "b": jnp.array([1.0, -1.0]),
            "k": jnp.array([[0.3, -0.1, 0.2]])}]
  lrs = [0.05, 0.6, 0.3, 0.1]
  eta, wd, mom = 0.02, 1e-2, 0.9
  cfg = optim_cfg(name="lars", lars_clip_lr=True, trust_coefficient=eta, weight_decay=wd,
                  momentum=mom, exclude_1d=exclude_1d)
  tx = optim.make_optimizer(cfg, lambda count: jnp.asarray(lrs)[count])
  state = tx.init(params)
  got = params
  for g in grads:
    updates, state = tx.update(g, state, got)
    got = optax.apply_updates(got, updates)
  want = _solo_lars_reference(params, grads, lrs, eta=eta, wd=wd, mom=mom,
                              exclude_1d=exclude_1d)
  for n in want:
    np.testing.assert_allclose(np.asarray(got[n]), want[n], rtol=1e-5, atol=1e-7)


def test_clipped_lars_is_sgd_below_the_cap_and_the_trust_ratio_above():
  w = jnp.array([[1.0, -2.0], [0.5, 3.0]])     # ||w|| = 3.775
  cfg = optim_cfg(name="lars", lars_clip_lr=True, trust_coefficient=0.02, weight_decay=0.0,
                  momentum=0.0)
  tx = optim.make_optimizer(cfg, 0.1)
  # Small gradient: eta ||w|| / ||g|| = 3.8 > lr, lars_lr = 1, the plain SGD step.
  small = {"w": jnp.full((2, 2), 0.01)}
  updates, _ = tx.update(small, tx.init({"w": w}), {"w": w})
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * np.asarray(small["w"]),
                             rtol=1e-6)
  # Large gradient: eta ||w|| / ||g|| = 0.0378 < lr, the step is that ratio times g, which
  # is also optax.lars's step at lr 1 (and 1 / lr times its step at this lr).
  large = {"w": jnp.full((2, 2), 1.0)}
  updates, _ = tx.update(large, tx.init({"w": w}), {"w": w})
  ratio = 0.02 * float(np.linalg.norm(np.asarray(w))) / 2.0
  np.testing.assert_allclose(np.asarray(updates["w"]), -ratio * np.ones((2, 2)), rtol=1e-5)
  plain = optim.make_optimizer(optim_cfg(name="lars", trust_coefficient=0.02, weight_decay=0.0,
                                         momentum=0.0), 0.1)
  updates_plain, _ = plain.update(large, plain.init({"w": w}), {"w": w})
  np.testing.assert_allclose(np.asarray(updates_plain["w"]), 0.1 * np.asarray(updates["w"]),
                             rtol=1e-5)


def test_adamw_masks_decay_of_1d_parameters():
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  tx = optim.make_optimizer(optim_cfg(name="adamw", weight_decay=0.5, exclude_1d=True), 1.0)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["b"]), 0.0)
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.5 * np.asarray(params["w"]))


def test_unknown_optimizer_is_named():
  with pytest.raises(ValueError, match="config.optim.name='adam'"):
    optim.make_optimizer(optim_cfg(name="adam"), 0.1)
