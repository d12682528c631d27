"""Mixed precision (``config.model.dtype = 'bfloat16'``): the network computes in bfloat16,
while parameters, optimiser state and every loss stay float32 (README "Mixed precision").

A few train updates (the loop's ``make_update``) from the same initial state in bfloat16 and
in float32 stay within ``LOSS_GAP`` of each other; and the losses receive float32 whatever
the encoder computes in (every method on a ViT: tests/test_vit.py; here the ResNet configs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from mecjax import configlib, evaluators, losses, methods, train

BATCH, SIZE, STEPS = 16, 16, 4

# Largest |loss_bf16 - loss_fp32| over the first STEPS updates. Measured (2026-11-23): here
# (8 updates) MEC 1.4e-3 (ViT) / 1.7e-3 (CIFAR ResNet-18), MUSIC 1.8e-4 (loss ~ -3.1); the
# 12-step command-line smoke runs, MEC 1.2e-3 (both encoders), MUSIC 1.3e-3;
# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 2e-3 per value), and MEC's
# loss is a small difference of such values (|loss| ~ 0.01-0.05 at init). The bound leaves
# a factor of about 3 over the largest gap seen.
LOSS_GAP = 5e-3


def load(spec, dtype, **overrides):
  config = configlib.load(str(REPO / "configs" / spec))
  with config.unlocked():
    config.model.dtype = dtype
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def updates(config, steps=STEPS):
  """Losses of ``steps`` updates on fixed random views, and the final state."""
  run = methods.RunInfo(global_batch=BATCH, steps_per_epoch=4, total_steps=12)
  method = methods.get_method(config, run)
  tx, lr, ema = train.make_tx(config, run, method.uses_target, method.frozen_mask())
  probe_net = evaluators.probe.LinearProbe(10)
  probe_tx = evaluators.probe.make_optimizer(config.probe)
  init = train.make_init(method, tx, probe_net, probe_tx, (2, SIZE, SIZE, 3))
  state = jax.jit(init, static_argnums=0)(0)
  step = jax.jit(train.make_update(method, tx, lr, ema, probe_net, probe_tx, False))
  rng = np.random.default_rng(3)
  out = []
  for _ in range(steps):
    views = [jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32)
             for _ in range(2)]
    state, metrics = step(state, views, jnp.zeros((BATCH,), jnp.int32))
    out.append(float(metrics["loss"]))
  return np.asarray(out), state


# MEC on its CIFAR ViT smoke network; MUSIC's smoke config on the same encoder (a ResNet-18
# pair compiles for about a minute on the CI machine; the ResNet's bfloat16 path is the one
# benchmarks/bench_step.py times, and its gap is the one quoted above).
TINY_VIT = {"model.name": "vit_tiny_cifar", "model.width": 0.25, "model.depth": 2,
            "model.stage_sizes": None}   # the smoke ResNet's blocks per stage
CASES = {"mec": ("mec_cifar10_vit.py:smoke", {}),
         "music": ("music_cifar10.py:smoke", TINY_VIT)}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_bfloat16_updates_track_float32_from_the_same_init(case):
  spec, overrides = CASES[case]
  fp32, s32 = updates(load(spec, "float32", **overrides))
  bf16, s16 = updates(load(spec, "bfloat16", **overrides))
  assert np.isfinite(bf16).all() and np.isfinite(fp32).all()
  gap = np.abs(bf16 - fp32)
  assert gap.max() <= LOSS_GAP, f"{case}: bf16 {bf16} vs fp32 {fp32}"
  # The gap is bfloat16's rounding, not zero: the network did compute in bfloat16.
  assert gap.max() > 1e-6
  for tree in (s16.params, s16.opt_state, s16.model_state):
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert leaves and {x.dtype for x in leaves} == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.isfinite(x).all()) for x in leaves)


@pytest.mark.parametrize("spec, overrides", [
    ("mec_cifar10.py:smoke", {}),
    ("music_cifar10.py:smoke", {}),
    ("vicreg_cifar10.py:smoke", {"regularizer.name": "e2mc"}),   # E2MC's sorts
])
def test_resnet_losses_receive_float32_in_bfloat16(spec, overrides, monkeypatch):
  config = load(spec, "bfloat16", **overrides)
  run = methods.RunInfo(global_batch=BATCH, steps_per_epoch=4, total_steps=12)
  method = methods.get_method(config, run)
  seen = []
  for name in losses.__all__:
    fn = getattr(losses, name)

    def spy(*args, _fn=fn, _name=name, **kwargs):
      seen.extend((_name, str(x.dtype)) for x in jax.tree.leaves((args, kwargs))
                  if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating))
      return _fn(*args, **kwargs)
    monkeypatch.setattr(losses, name, spy)
  params, state = jax.eval_shape(lambda key: method.init(key, (BATCH, SIZE, SIZE, 3)),
                                 jax.random.key(0))
  views = [jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32)] * 2
  target = params if method.uses_target else None
  jaxpr, (loss, out) = jax.make_jaxpr(method.loss, return_shape=True)(
      params, state, target, views, jnp.int32(5))
  assert loss.dtype == jnp.float32 and all(e.dtype == jnp.float32 for e in out.embeddings)
  assert seen and {dtype for _, dtype in seen} == {"float32"}, seen
  # ... while the network itself computes in bfloat16.
  assert "bf16[" in str(jaxpr)
