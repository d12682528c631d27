"""ViT encoders (mecjax/models/vit.py): MoCo v3's sizes and initialisation, the position
embedding of each input's grid, the frozen patch projection, every method on a ViT (with
float32 reaching the losses under bfloat16 compute), and the CIFAR ViT smoke config from the
command line (kNN monitor, frozen projection after training, export refused)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_main
from mecjax import configlib, evaluators, export, losses, methods, models, train
from mecjax.checkpoint import read_state
from mecjax.models.vit import sincos_2d


def model_cfg(name, **overrides):
  cfg = configlib.base().model
  cfg.name = name
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def tiny_vit(**overrides):
  """A 48-wide (width 0.25 of vit_tiny_cifar), 1-block ViT on 4x4 patches."""
  return models.get_encoder(model_cfg("vit_tiny_cifar", **{"width": 0.25, "depth": 1,
                                                           **overrides}))


# ------------------------------------------------------------------- sizes, init


@pytest.mark.parametrize("name, low, high", [("vit_small", 21.6e6, 22.1e6),
                                             ("vit_base", 85.5e6, 86.6e6)])
def test_parameter_counts_are_moco_v3s(name, low, high):
  enc = models.get_encoder(model_cfg(name))
  assert (enc.patch_size, enc.depth, enc.num_heads) == (16, 12, 12)
  shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  learnt = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  d = enc.width
  # Per block: qkv 3d^2+3d, proj d^2+d, MLP 8d^2+5d, two LayerNorms 4d; patch projection
  # (16*16*3+1) d; class token d; final LayerNorm 2d.
  assert learnt == 12 * (12 * d * d + 13 * d) + (16 * 16 * 3 + 1) * d + d + 2 * d
  # timm (whose counts MoCo v3 reports: ViT-S 22M, ViT-B 86M) holds the fixed 197 x d
  # position table as a parameter; here it is computed from the input's grid.
  assert low <= learnt + (1 + 14 * 14) * d <= high


def test_initialisation_follows_moco_v3():
  enc = tiny_vit(width=0.5)                      # 96 wide, 3 heads of 32
  params = jax.jit(enc.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  d = 96

  def limit_is(x, limit):   # uniform(-limit, limit): the largest draw sits just inside
    x = np.abs(np.asarray(x))
    assert x.max() <= limit and x.max() > 0.95 * limit, (x.max(), limit)

  # Q, K and V each xavier-uniform as a d x d matrix, not the fused d x 3d one (0.125).
  limit_is(params["block0"]["attn"]["qkv"]["kernel"], np.sqrt(6 / (d + d)))
  limit_is(params["block0"]["fc1"]["kernel"], np.sqrt(6 / (d + 4 * d)))
  limit_is(params["block0"]["attn"]["proj"]["kernel"], np.sqrt(6 / (d + d)))
  # The patch projection xavier-uniform on its flattened (4*4*3) x d matrix.
  limit_is(params["patch_embed"]["kernel"], np.sqrt(6 / (4 * 4 * 3 + d)))
  cls = np.asarray(params["cls_token"])
  assert 0 < np.abs(cls).max() < 1e-5 and 0.5e-6 < cls.std() < 2e-6
  for bias in (params["patch_embed"]["bias"], params["block0"]["attn"]["qkv"]["bias"],
               params["block0"]["fc2"]["bias"]):
    assert not np.any(np.asarray(bias))


# --------------------------------------------------------------- position embedding


def test_position_embedding_is_the_sincos_table_of_the_input_grid():
  table = sincos_2d(2, 3, 8)
  omega = 1.0 / 10000.0 ** (np.arange(2) / 2)
  for i in range(2):
    for j in range(3):
      want = np.concatenate([np.sin(i * omega), np.cos(i * omega), np.sin(j * omega),
                             np.cos(j * omega)])
      np.testing.assert_allclose(table[i * 3 + j], want, rtol=1e-6, atol=1e-7)
  enc = tiny_vit()
  params = jax.jit(enc.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  apply = jax.jit(enc.apply)
  rng = np.random.default_rng(0)
  # The same parameters take a 32x32 global view (8x8 grid) and a 16x16 local one (4x4).
  x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  assert apply(params, jnp.zeros((2, 32, 32, 3))).shape == (2, 48)
  # Without a position embedding the class token could not tell patches apart: swapping
  # two patches of an image must change it.
  x[1] = x[0]
  x[1, 0:4, 0:4], x[1, 12:16, 12:16] = x[0, 12:16, 12:16], x[0, 0:4, 0:4]
  a, b = apply(params, jnp.asarray(x))
  assert float(jnp.abs(a - b).max()) > 1e-3


def test_bad_sizes_and_keys_are_named():
  with pytest.raises(configlib.ConfigError, match="model.patch_size=4 applies to ViT"):
    models.get_encoder(model_cfg("resnet18_cifar", patch_size=4))
  with pytest.raises(configlib.ConfigError, match="num_heads=5"):
    models.get_encoder(model_cfg("vit_tiny_cifar", num_heads=5))
  enc = tiny_vit()
  with pytest.raises(ValueError, match=r"\(1, 18, 18, 3\).*config.model.patch_size"):
    jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, 18, 18, 3))))


# ----------------------------------------------------------- frozen patch projection


def smoke_method(spec="mec_cifar10_vit.py:smoke", batch=16, **overrides):
  config = configlib.load(str(REPO / "configs" / spec))
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  run = methods.RunInfo(global_batch=batch, steps_per_epoch=4, total_steps=12)
  return config, run, methods.get_method(config, run)


@pytest.mark.slow
def test_frozen_patch_projection_gets_no_gradient_and_no_update():
  config, run, method = smoke_method()
  assert config.model.stop_grad_patch_embed and config.optim.weight_decay > 0
  params, _ = jax.jit(lambda key: method.init(key, (4, 16, 16, 3)))(jax.random.key(0))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16, 16, 3)), jnp.float32)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(method.net.apply(
      {"params": p}, x, method=methods.SSLNet.features) ** 2)))(params)
  assert not any(np.any(g) for g in jax.tree.leaves(grads["encoder"]["patch_embed"]))
  assert np.any(grads["encoder"]["cls_token"])
  # The optimiser (AdamW, weight decay 0.1) leaves it where it is even under a gradient;
  # without the mask the same steps move it (two: the warm-up's first learning rate is 0).
  fake = jax.tree.map(jnp.ones_like, params)
  moved = {}
  for frozen in (method.frozen_mask(), None):
    tx, _, _ = train.make_tx(config, run, method.uses_target, frozen)

    @jax.jit
    def two_steps(p):
      opt_state = tx.init(p)
      for _ in range(2):
        updates, opt_state = tx.update(fake, opt_state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
      return p
    new = two_steps(params)
    moved[frozen is None] = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                         new["encoder"], params["encoder"])
  assert not any(jax.tree.leaves(moved[False]["patch_embed"]))
  assert all(jax.tree.leaves(moved[True]["patch_embed"]))
  assert moved[False]["cls_token"] and moved[False]["block0"]["attn"]["qkv"]["kernel"]


# ------------------------------------------------------- every method on any encoder


def spy_on_losses(monkeypatch) -> list:
  """Record the dtype of every array argument of every function of mecjax.losses that a
  method calls (they call them through the package)."""
  seen = []
  for name in losses.__all__:
    fn = getattr(losses, name)

    def spy(*args, _fn=fn, _name=name, **kwargs):
      for leaf in jax.tree.leaves((args, kwargs)):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
          seen.append((_name, str(leaf.dtype)))
      return _fn(*args, **kwargs)
    monkeypatch.setattr(losses, name, spy)
  return seen


EVERY_METHOD = sorted(methods.METHODS) + ["vicreg+e2mc"]


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY_METHOD)
def test_every_method_takes_a_vit_and_its_losses_get_float32(name, monkeypatch):
  method_name, _, reg = name.partition("+")
  overrides = {"model.name": "vit_tiny_cifar", "model.width": 0.25, "model.depth": 1,
               "model.dtype": "bfloat16", "model.stage_sizes": None}   # the ResNet smoke's
  if reg:
    overrides["regularizer.name"] = reg
  config, run, method = smoke_method(f"{method_name}_cifar10.py:smoke", **overrides)
  seen = spy_on_losses(monkeypatch)
  params, state = jax.eval_shape(lambda key: method.init(key, (16, 16, 16, 3)),
                                 jax.random.key(0))
  target = params if method.uses_target else None
  views = [jax.ShapeDtypeStruct((16, 16, 16, 3), jnp.float32)] * 2
  loss, out = jax.eval_shape(method.loss, params, state, target, views, jnp.int32(5))
  assert loss.shape == () and loss.dtype == jnp.float32
  assert all(f.shape == (16, 48) and f.dtype == jnp.float32 for f in out.features)
  assert all(e.dtype == jnp.float32 for e in out.embeddings)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert seen and {dtype for _, dtype in seen} == {"float32"}, seen
  if reg:
    assert "e2mc_loss" in {fn for fn, _ in seen}


# ----------------------------------------------------------------- command line


@pytest.mark.slow
def test_cifar_vit_smoke_trains_monitors_keeps_its_frozen_projection_and_refuses_export(
    tmp_path, cifar_path, compile_cache, capsys):
  workdir = tmp_path / "run"
  proc = run_main("configs/mec_cifar10_vit.py:smoke", workdir,
                  f"--config.data.path={cifar_path}", cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "loss" in r]
  assert train_rows[-1]["step"] == 12 and np.isfinite([r["loss"] for r in train_rows]).all()
  assert "knn_top1" in rows[-1] and 0.0 <= rows[-1]["knn_top1"] <= 1.0

  # After 12 AdamW steps (weight decay 0.1) the patch projection is still its initial value,
  # computed again here the way the loop initialises it; the rest has moved.
  config, run, method = smoke_method(batch=32)
  tx, _, _ = train.make_tx(config, run, method.uses_target, method.frozen_mask())
  init = jax.jit(train.make_init(method, tx, evaluators.probe.LinearProbe(10),
                                 evaluators.probe.make_optimizer(config.probe),
                                 (2, 16, 16, 3)), static_argnums=0)(config.seed)
  saved = read_state(str(workdir))["params"]["encoder"]
  first = init.params["encoder"]
  for key in ("kernel", "bias"):
    np.testing.assert_array_equal(saved["patch_embed"][key], first["patch_embed"][key])
  assert np.any(saved["block0"]["attn"]["qkv"]["kernel"] !=
                first["block0"]["attn"]["qkv"]["kernel"])

  assert export.main([f"--workdir={workdir}", "--format=safetensors",
                      f"--out={tmp_path / 'x.safetensors'}"]) == 2
  errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
  assert len(errors) == 1 and "'vit_tiny_cifar' is not a ResNet" in errors[0], errors
