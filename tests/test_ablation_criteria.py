"""E2MC's ablation criteria (variance-covariance, uniformity, MMCR) against float64 numpy
transliterations of the official SwAV ablation scripts' formulas (written here
independently: per-view loops, ``pdist``-style explicit pair lists, numpy's SVD), values
and gradients (central finite differences of the numpy reference), and as regularisers of
the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from mecjax import configlib, losses, methods
from mecjax.losses import ablation


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_vc(views, mu, nu, space):
  n, d = views[0].shape
  std_loss = cov_loss = 0.0
  for z in views:
    e = _normalize(z) if space == "hypersphere" else z
    e = e - e.mean(axis=0)
    std = np.sqrt(e.var(axis=0, ddof=1) + 0.0001)
    target = 1.0 / np.sqrt(d) if space == "hypersphere" else 1.0
    std_loss += np.mean(np.maximum(target - std, 0.0)) / len(views)
    cov = e.T @ e / (n - 1)
    off = cov[~np.eye(d, dtype=bool)]
    cov_loss += np.sum(off ** 2) / d
  return nu * cov_loss + mu * std_loss


def np_uniformity(views, t):
  total = 0.0
  for z in views:
    e = _normalize(z)
    n = len(e)
    sq = [np.sum((e[i] - e[j]) ** 2) for i in range(n) for j in range(i + 1, n)]
    total += np.log(np.mean(np.exp(-t * np.array(sq)))) / len(views)
  return total


def np_alignment(z1, z2):
  return np.mean(np.sum((_normalize(z1) - _normalize(z2)) ** 2, axis=1))


def np_mmcr(views):
  centroids = np.mean(np.stack([_normalize(z) for z in views], axis=-1), axis=-1)
  centroids = centroids[np.isfinite(centroids).all(axis=1)]
  return -np.sum(np.linalg.svd(centroids, compute_uv=False))


def numeric_grad(f, views, h=1e-6):
  grads = []
  for k in range(len(views)):
    g = np.zeros_like(views[k])
    for idx in np.ndindex(views[k].shape):
      plus = [v.copy() for v in views]
      minus = [v.copy() for v in views]
      plus[k][idx] += h
      minus[k][idx] -= h
      g[idx] = (f(plus) - f(minus)) / (2 * h)
    grads.append(g)
  return grads


def sample_views(seed, count=2, n=12, d=6):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, d))
  # The scale keeps some per-dimension stds below the projector-space hinge target 1.
  return [0.6 * (base + 0.5 * rng.normal(size=(n, d))) for _ in range(count)]


def check(jax_fn, np_fn, views, rtol=1e-6):
  with jax.enable_x64(True):
    args = [jnp.asarray(v) for v in views]
    value = float(jax_fn(args))
    grads = jax.grad(lambda vs: jax_fn(vs))(args)
  np.testing.assert_allclose(value, np_fn(views), rtol=1e-12, atol=1e-14)
  for g, want in zip(grads, numeric_grad(np_fn, views)):
    np.testing.assert_allclose(np.asarray(g), want, rtol=rtol, atol=1e-8)


@pytest.mark.parametrize("space", ["hypersphere", "projector"])
def test_vc_matches_the_official_formula(space):
  views = sample_views(0)
  with jax.enable_x64(True):
    terms = ablation.vc_terms([jnp.asarray(v) for v in views], space=space)
  assert float(terms["std"]) > 0 and float(terms["cov"]) > 0   # both terms active
  check(lambda vs: losses.vc_loss(vs, std_weight=0.1, cov_weight=0.001, space=space)[0],
        lambda vs: np_vc(vs, 0.1, 0.001, space), views)


@pytest.mark.parametrize("t,align_weight", [(2.0, 0.0), (3.0, 1.0)])
def test_au_matches_uniformity_over_each_views_pairs(t, align_weight):
  views = sample_views(1)
  check(lambda vs: losses.au_loss(vs, t=t, align_weight=align_weight)[0],
        lambda vs: np_uniformity(vs, t) + align_weight * np_alignment(vs[0], vs[1]), views)


@pytest.mark.parametrize("count", [2, 4])
def test_mmcr_matches_the_nuclear_norm_of_the_centroids(count):
  views = sample_views(2, count=count)
  check(lambda vs: losses.mmcr_loss(vs)[0], np_mmcr, views, rtol=1e-5)


def test_mmcr_zeroes_non_finite_rows_as_the_official_script_drops_them():
  views = sample_views(3)
  bad = [v.copy() for v in views]
  bad[0][4] = np.inf
  with jax.enable_x64(True):
    got = float(losses.mmcr_loss([jnp.asarray(v) for v in bad])[0])
  want = np_mmcr([np.delete(v, 4, axis=0) for v in views])
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_uniformity_is_lowest_for_spread_points():
  angles = 2 * np.pi * np.arange(16) / 16
  spread = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  clumped = spread * np.array([1.0, 0.05]) + np.array([1.0, 0.0])
  assert float(ablation.uniformity(jnp.asarray(spread))) < float(
      ablation.uniformity(jnp.asarray(clumped)))


def test_bad_input_names_the_shapes():
  with pytest.raises(ValueError, match=r"\(N, D\)"):
    losses.mmcr_loss([jnp.zeros((4, 3)), jnp.zeros((5, 3))])
  with pytest.raises(ValueError, match="space"):
    losses.vc_loss([jnp.zeros((4, 3))], space="sphere")


BATCH, SIZE = 16, 16


def build(variant):
  config = configlib.load(str(REPO / "configs" / "e2mc_swav_cifar10.py"), variant)
  run = methods.RunInfo(global_batch=BATCH, steps_per_epoch=4, total_steps=6)
  method = methods.get_method(config, run)
  params, state = method.init(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
  return config, method, method.project_params(params), state


@pytest.mark.parametrize("variant,weight", [("smoke,vc", 1.0), ("smoke,au", 0.5),
                                            ("smoke,mmcr", 0.005)])
@pytest.mark.slow
def test_each_criterion_is_a_regulariser_of_swav(variant, weight):
  config, method, params, state = build(variant)
  assert config.regularizer.weight == weight
  rng = np.random.default_rng(0)
  views = [jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32) for _ in range(2)]
  step = jnp.int32(1)
  total, out = method.loss(params, state, None, views, step)
  objective, plain, _ = method.objective(params, state, None, views, step)
  z = plain.embeddings
  name = config.regularizer.name
  if name == "vc":
    want = losses.vc_loss(z, std_weight=0.1, cov_weight=0.001)[0]
  elif name == "au":
    want = losses.au_loss(z, t=2.0)[0]
  else:
    want = losses.mmcr_loss(z)[0]
  np.testing.assert_allclose(float(out.metrics["reg_loss"]), float(want), rtol=1e-5)
  np.testing.assert_allclose(float(total), float(objective + weight * want), rtol=1e-5)


def test_mmcr_regulariser_averages_local_views_too():
  reg = methods.regularizers.MmcrRegularizer(None, None)
  views = [jnp.asarray(v, jnp.float32) for v in sample_views(4, count=4)]
  loss, _ = reg([], views[:2], 0, local=views[2:])
  np.testing.assert_allclose(float(loss), np_mmcr([np.asarray(v) for v in views]), rtol=1e-5)


def test_imagenet_config_has_the_ablation_variants():
  for name, reg, weight in (("vc", "vc", 1.0), ("au", "au", 0.5), ("mmcr", "mmcr", 0.005)):
    c = configlib.load(str(REPO / "configs" / "e2mc_swav_imagenet.py"), name)
    assert (c.regularizer.name, c.regularizer.weight, c.method) == (reg, weight, "swav")


def test_vicreg_cifar_config_has_the_ablation_variants_on_the_same_continuation():
  # Item: the criteria continue the same VICReg weights beside E2MC and the ablation, so
  # everything but the regulariser is E2MC's continuation (10 epochs, 0.01 x lr, batch 512).
  path = str(REPO / "configs" / "e2mc_vicreg_cifar10.py")
  e2mc = configlib.load(path, None)
  for name, weight in (("vc", 1.0), ("au", 0.5), ("mmcr", 0.005)):
    c = configlib.load(path, name)
    assert (c.regularizer.name, c.regularizer.weight, c.method) == (name, weight, "vicreg")
    for key in ("optim.base_lr", "batch_size", "total_epochs", "init.workdir", "init.heads"):
      a, b = c, e2mc
      for part in key.split("."):
        a, b = a[part], b[part]
      assert a == b, key
