"""The official MEC / E2MC schedules, step by step against float64 numpy transliterations of
the official code's per-step arrays, and the configs that choose them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from mecjax import configlib, methods, optim
from mecjax.methods.regularizers import lamda_inv_schedule


def np_cosine_scheduler(base, final, total, warmup, start=0.0):
  """The official ``cosine_scheduler`` array, in steps: ``np.linspace(start, base, W)`` then
  ``final + (base - final) (1 + cos(pi i / len(iters))) / 2`` over the remaining steps."""
  warm = np.linspace(start, base, warmup) if warmup > 0 else np.array([])
  iters = np.arange(total - warmup)
  cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
  return np.concatenate([warm, cos])


def np_lamda_inv(lamda_inv, total, warmup, factor=8.0):
  """The official per-step lamda_inv array: linspace(8 lamda_inv, lamda_inv, W), then flat."""
  return np.concatenate([np.linspace(factor * lamda_inv, lamda_inv, warmup),
                         np.full(total - warmup, lamda_inv)])


@pytest.mark.parametrize("peak,final,total,warmup", [
    (2.0, 0.0, 100, 10), (0.12, 0.0, 37, 5), (1.0, 0.25, 50, 1), (0.5, 0.0, 20, 0),
    (0.3, 0.3, 30, 0)])
def test_official_lr_schedule_matches_cosine_scheduler_every_step(peak, final, total, warmup):
  want = np_cosine_scheduler(peak, final, total, warmup)
  with jax.enable_x64(True):
    sched = optim.warmup_cosine(peak, total, warmup, final, convention="official")
    got = np.array([float(sched(jnp.asarray(s))) for s in range(total)])
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
  if warmup > 1:
    assert got[warmup - 1] == pytest.approx(peak, rel=1e-12)   # one step before optax


def test_optax_convention_reaches_the_peak_one_step_later():
  with jax.enable_x64(True):
    optax_lr = optim.warmup_cosine(2.0, 100, 10, convention="optax")
    official = optim.warmup_cosine(2.0, 100, 10, convention="official")
    assert float(optax_lr(9)) == pytest.approx(1.8)
    assert float(official(9)) == pytest.approx(2.0)
    # The cosine parts coincide from step W on.
    for s in (10, 40, 99):
      assert float(optax_lr(s)) == pytest.approx(float(official(s)), rel=1e-12)
  with pytest.raises(configlib.ConfigError, match="optim.schedule"):
    optim.warmup_cosine(2.0, 100, 10, convention="torch")


@pytest.mark.parametrize("total,warmup", [(50, 10), (20, 1), (7, 7), (9, 0)])
def test_lamda_inv_warmup_matches_official_linspace(total, warmup):
  cfg = configlib.base().mec
  with cfg.unlocked():
    cfg.eps_sq = 7.68
    cfg.lamda_warmup_steps = warmup
  run = methods.RunInfo(global_batch=32, steps_per_epoch=5, total_steps=total)
  base = 32 * 7.68 / 64
  with jax.enable_x64(True):
    sched = lamda_inv_schedule(cfg, run, 64)
    got = np.array([float(sched(jnp.asarray(s))) for s in range(total)])
  want = np_lamda_inv(base, total, warmup)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  if warmup > 1:   # (np.linspace(a, b, 1) is [a])
    assert got[warmup - 1] == pytest.approx(base, rel=1e-12)


def test_the_mec_regulariser_warms_lamda_inv_up_as_mec():
  config = configlib.load(str(REPO / "configs" / "simclr_cifar10.py"), "smoke,mec")
  run = methods.RunInfo(global_batch=32, steps_per_epoch=8, total_steps=12)
  method = methods.get_method(config, run)
  d = config.projector.out_dim
  base = 32 * config.mec.eps_sq / d
  w = config.mec.lamda_warmup_steps
  got = [float(method.regularizer.schedule(d)(s)) for s in range(12)]
  np.testing.assert_allclose(got, np_lamda_inv(base, 12, w), rtol=1e-6)


@pytest.mark.parametrize("spec,schedule,eps", [
    ("mec_cifar10.py", "official", None), ("mec_imagenet.py", "official", None),
    ("mec_cifar10.py:cpu,adaptive", "official", None),
    ("e2mc_swav_cifar10.py", "official", 2.0 ** -23),
    ("e2mc_simsiam_cifar10.py", "official", 2.0 ** -23),
    ("e2mc_swav_imagenet.py", "official", 2.0 ** -23),
    ("e2mc_simsiam_imagenet.py", "official", 2.0 ** -23),
    ("e2mc_vicreg_cifar10.py", "official", 1e-7), ("e2mc_vicreg_imagenet.py", "official", 1e-7),
    ("simclr_cifar10.py", "optax", None), ("vicreg_cifar10.py", "optax", None),
    ("mec_imagenet_vit.py", "optax", None)])
def test_configs_pick_the_official_schedule_and_eps(spec, schedule, eps):
  c = configlib.load(str(REPO / "configs" / spec))
  assert c.optim.schedule == schedule
  if eps is not None:
    assert c.e2mc.eps == eps
    # float32 machine epsilon, as the SwAV and SimSiam E2MC scripts use inside the log.
    if eps != 1e-7:
      assert eps == float(np.finfo(np.float32).eps)
