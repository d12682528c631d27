"""Multi-crop: global then local views from both recipe kinds, the local views forwarded as
one batch, each method's pairing rule (MEC's against a float64 transliteration of the official
loss), refusals, 1 vs 8 devices, and the command-line smoke run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh

from conftest import REPO, run_main, sharded_updates
from mecjax import configlib, losses, methods, parallel
from mecjax.data import augment, pipeline
from mecjax.data.sources import ArraySource
from mecjax.methods import pairing

BATCH, SIZE, LOCAL = 8, 16, 8


def aug_cfg(**kw):
  cfg = ml_collections.ConfigDict(configlib.base().aug.to_dict())
  cfg.update(kw)
  return cfg


def images(n=6, side=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- recipes


@pytest.mark.slow
def test_device_crop_views_globals_then_locals():
  x = jnp.asarray(images())
  index, key = jnp.arange(20, 26), jax.random.key(4)
  # Crops, flips and solarize only (the colour ops' draws are tested in test_data.py): the
  # views differ by their crops alone, and compile in seconds.
  colour = dict(jitter_prob=0.0, grayscale_prob=0.0)
  plain = augment.get_recipe(aug_cfg(**colour), 32, seed=0)
  r = augment.get_recipe(aug_cfg(num_local=3, local_size=16, local_solarize_prob=0.5,
                                 **colour), 32, seed=0)
  views = jax.jit(lambda x, i: r.views(x, i, 3, key))   # one compilation for both calls
  out = views(x, index)
  assert [v.shape for v in out] == [(6, 32, 32, 3)] * 2 + [(6, 16, 16, 3)] * 3
  assert all(v.dtype == jnp.float32 for v in out)
  # The local views draw from their own key stream: the global views are unchanged.
  for a, b in zip(jax.jit(lambda x, i: plain.views(x, i, 3, key))(x, index), out[:2]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  local = [np.asarray(v) for v in out[2:]]
  small = [np.asarray(jax.image.resize(v, (6, 16, 16, 3), "linear")) for v in out[:2]]
  for i, a in enumerate(local):
    for b in local[i + 1:] + small:
      assert np.abs(a - b).mean() > 0.1
  # Keyed by (seed, step, index) only: the samples in another order, the same views.
  for a, b in zip(out, views(x[::-1], index[::-1])):
    np.testing.assert_allclose(np.asarray(a)[::-1], np.asarray(b), rtol=1e-5, atol=1e-5)


def test_host_crop_views_through_the_pipeline():
  cfg = aug_cfg(name="mocov3", blur_prob=(1.0, 0.1), solarize_prob=(0.0, 0.2), num_local=2,
                local_size=8, local_blur_prob=0.5)
  r = augment.get_recipe(cfg, 16, seed=0)
  plain = augment.get_recipe(aug_cfg(name="mocov3", blur_prob=(1.0, 0.1),
                                     solarize_prob=(0.0, 0.2)), 16, seed=0)
  im = images(1, side=40)[0]
  ex = {"image": im, "label": 1, "index": 7}
  out = r.host_transform()(ex, 3)["image"]
  assert out["global"].shape == (2, 16, 16, 3) and out["local"].shape == (2, 8, 8, 3)
  assert out["global"].dtype == out["local"].dtype == np.uint8
  # Host locals come after the globals from one generator: the globals are unchanged.
  np.testing.assert_array_equal(out["global"], plain.host_transform()(ex, 3)["image"])
  assert np.abs(out["local"][0].astype(float) - out["local"][1]).mean() > 5

  src = ArraySource(images(16, side=40, seed=1), np.arange(16) % 4)
  it = pipeline.TrainInput(src, global_batch=8, seed=0, mesh=parallel.make_mesh(),
                           total_steps=2, host_transform=r.host_transform(), threads=1)
  batch = next(it)
  assert batch["image"]["global"].shape == (8, 2, 16, 16, 3)
  assert batch["image"]["local"].shape == (8, 2, 8, 8, 3)
  views = jax.eval_shape(lambda b: r.views(b["image"], b["index"], 0, jax.random.key(0)),
                         batch)
  assert [v.shape for v in views] == [(8, 16, 16, 3)] * 2 + [(8, 8, 8, 3)] * 2
  with pytest.raises(ValueError, match="2 global and 2 local"):
    jax.eval_shape(lambda b: r.views(b["image"]["global"], b["index"], 0, jax.random.key(0)),
                   batch)


@pytest.mark.parametrize("kw, key", [({"num_local": 2}, "config.aug.local_size=None"),
                                     ({"num_local": 2, "local_size": 40}, "local_size=40"),
                                     ({"num_local": -1}, "config.aug.num_local=-1")])
def test_local_view_keys_are_checked(kw, key):
  with pytest.raises(configlib.ConfigError, match=key.replace(".", r"\.")) as err:
    augment.get_recipe(aug_cfg(**kw), 32, seed=0)
  assert "\n" not in str(err.value)


def test_multicrop_variants_compose():
  cifar = configlib.load(str(REPO / "configs/mec_cifar10.py:smoke,multicrop"))
  assert (cifar.aug.num_local, cifar.aug.local_size, cifar.data.image_size) == (6, 16, 32)
  imnet = configlib.load(str(REPO / "configs/mec_imagenet.py:multicrop"))
  assert (imnet.aug.num_local, imnet.aug.local_size, imnet.aug.crop_scale) == (6, 96,
                                                                              (0.14, 1.0))
  assert configlib.load(str(REPO / "configs/mec_imagenet.py:smoke,multicrop")).aug.local_size \
      == 27


# ------------------------------------------------------------------------- pairing


def build(spec, num_local=0, **overrides):
  config = configlib.load(str(REPO / "configs" / spec))
  with config.unlocked():
    config.aug.num_local = num_local
    config.aug.local_size = LOCAL if num_local else None
    for key, value in overrides.items():
      section, leaf = key.split(".")
      config[section][leaf] = value
  run = methods.RunInfo(global_batch=BATCH, steps_per_epoch=4, total_steps=12)
  method = methods.get_method(config, run)
  params, state = method.init(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
  return method, method.project_params(params), state


def make_views(num_local, seed=0, batch=BATCH):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(batch, s, s, 3)), jnp.float32)
          for s in [SIZE] * 2 + [LOCAL] * num_local]


def official_mec(t, o, lamda_inv, order=4):
  """float64 numpy transliteration of the official pair loss, ``-(lamda_inv / m) T(t, o)``."""
  t, o = (np.asarray(x, np.float64) for x in (t, o))
  t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
  o = o / np.maximum(np.linalg.norm(o, axis=1, keepdims=True), 1e-12)
  c = t @ o.T / lamda_inv
  power, series = np.eye(len(c)), 0.0
  for k in range(1, order + 1):
    power = power @ c
    series += (-1) ** (k + 1) * np.trace(power) / k
  return -lamda_inv / len(c) * series


def mec_outputs(method, params, state, views):
  online, _ = method.forward_views(params, state["batch_stats"], views)
  teacher, _ = method.forward_views(params, state["target_batch_stats"], views[:2],
                                    method="embed")
  return [t["embedding"] for t in teacher], [o["prediction"] for o in online]


@pytest.mark.slow
def test_mec_two_views_is_the_official_crossed_loss():
  method, params, state = build("mec_cifar10.py:smoke")
  step = jnp.int32(2)
  lamda_inv = float(method.lamda_inv(step))

  @jax.jit   # one compilation instead of the forward's ops one by one
  def run(params, views):
    loss, _ = method.loss(params, state, params, views, step)
    t, o = mec_outputs(method, params, state, views)
    # The two-view expression the method had before multi-crop.
    before = (losses.mec_loss(t[0], o[1], lamda_inv=lamda_inv, order=4) +
              losses.mec_loss(t[1], o[0], lamda_inv=lamda_inv, order=4)) / 2
    return loss, before, t, o

  loss, before, t, o = run(params, make_views(0))
  np.testing.assert_allclose(float(loss), float(before), rtol=2e-7)
  # It is the official -(lamda_inv / 2m) (T(t1, o2) + T(t2, o1)).
  want = (official_mec(t[0], o[1], lamda_inv) + official_mec(t[1], o[0], lamda_inv)) / 2
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.mark.slow
def test_mec_multicrop_loss_is_the_mean_over_its_pairs():
  method, params, state = build("mec_cifar10.py:smoke", num_local=3)
  step = jnp.int32(5)
  lamda_inv = float(method.lamda_inv(step))

  @jax.jit
  def run(params, views):
    loss, out = method.loss(params, state, params, views, step)
    online, _ = method.forward_views(params, state["batch_stats"], views)
    joint = method.net.apply({"params": params, "batch_stats": state["batch_stats"]},
                             jnp.concatenate(views[2:]), train=True, mutable=["batch_stats"])[0]
    return loss, out, online, joint, mec_outputs(method, params, state, views)

  loss, out, online, joint, (t, o) = run(params, make_views(3, seed=1))
  # Locals are one batch of 3B rows: their outputs are the concatenated forward's, split.
  np.testing.assert_allclose(np.concatenate([np.asarray(x["prediction"]) for x in online[2:]]),
                             np.asarray(joint["prediction"]), rtol=1e-5, atol=1e-6)
  stated = [(0, 1), (1, 0)] + [(g, v) for v in (2, 3, 4) for g in (0, 1)]
  assert sorted(pairing.to_globals(5)) == sorted(stated)
  want = np.mean([official_mec(t[g], o[v], lamda_inv) for g, v in stated])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # The probe, the monitors and E2MC see the global views only.
  assert len(out.features) == len(out.embeddings) == 2
  assert out.features[0].shape[0] == BATCH


@pytest.mark.slow
def test_siamese_swav_and_simclr_pair_locals_with_globals():
  sg = jax.lax.stop_gradient
  v = make_views(2, seed=2)
  step = jnp.int32(6)
  to_g = [(0, 1), (1, 0), (0, 2), (0, 3), (1, 2), (1, 3)]

  method, params, state = build("simsiam_cifar10.py:smoke", num_local=2)
  online, _ = method.forward_views(params, state["batch_stats"], v)
  want = np.mean([losses.simsiam_loss(online[b]["prediction"], sg(online[a]["embedding"]))
                  for a, b in to_g])
  np.testing.assert_allclose(float(method.loss(params, state, None, v, step)[0]), want,
                             rtol=1e-5)

  method, params, state = build("byol_cifar10.py:smoke", num_local=2)
  target = jax.tree.map(lambda p: p * 0.9, params)
  online, _ = method.forward_views(params, state["batch_stats"], v)
  teacher, _ = method.forward_views(target, state["target_batch_stats"], v[:2], method="embed")
  want = 2 * np.mean([losses.byol_loss(online[b]["prediction"], teacher[a]["embedding"])
                      for a, b in to_g])
  np.testing.assert_allclose(float(method.loss(params, state, target, v, step)[0]), want,
                             rtol=1e-5)

  method, params, state = build("simclr_cifar10.py:smoke", num_local=2)
  z = [o["embedding"] for o in method.forward_views(params, state["batch_stats"], v)[0]]
  want = np.mean([losses.infonce_loss(z[a], z[b], temperature=0.2)
                  for a, b in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]])
  np.testing.assert_allclose(float(method.loss(params, state, None, v, step)[0]), want,
                             rtol=1e-5)

  method, params, state = build("swav_cifar10.py:smoke", num_local=2, **{"swav.queue_size": 0})
  outs, _ = method.forward_views(params, state["batch_stats"], v, method="embed")
  kernel = params["predictor"]["prototypes"]
  scores = [o["embedding"] / jnp.linalg.norm(o["embedding"], axis=1, keepdims=True) @ kernel
            for o in outs]
  codes = [losses.sinkhorn(sg(s)) for s in scores[:2]]   # the global views' codes only
  logp = [jax.nn.log_softmax(s / 0.1, axis=-1) for s in scores]
  want = np.mean([-jnp.mean(jnp.sum(codes[g] * logp[u], axis=-1)) for g, u in to_g])
  np.testing.assert_allclose(float(method.loss(params, state, None, v, step)[0]), want,
                             rtol=1e-5)


@pytest.mark.parametrize("spec", ["barlow_twins_cifar10.py:smoke", "vicreg_cifar10.py:smoke",
                                  "music_cifar10.py:smoke"])
def test_methods_without_a_rule_refuse_local_views(spec):
  with pytest.raises(configlib.ConfigError, match=r"config\.aug\.num_local=2: ") as err:
    build(spec, num_local=2)
  assert "\n" not in str(err.value)


# ------------------------------------------------------------------- 1 vs 8 devices


def updates(mesh, steps=2):
  config = configlib.load(str(REPO / "configs/mec_cifar10.py:smoke"))
  with config.unlocked():
    config.aug.num_local, config.aug.local_size = 2, LOCAL
  return sharded_updates(
      config, mesh, lambda i, rng: make_views(2, seed=10 + i, batch=2 * BATCH),
      global_batch=2 * BATCH, image_size=SIZE, steps=steps)


@pytest.mark.slow
def test_mec_multicrop_updates_alike_on_one_and_eight_devices():
  devices = jax.devices()
  assert len(devices) == 8
  one = updates(Mesh(np.asarray(devices[:1]), ("data",)))
  eight = updates(Mesh(np.asarray(devices), ("data",)))
  for i, (a, b) in enumerate(zip(one, eight)):
    assert np.isfinite(a["loss"])
    for k in ("loss", "mec", "pos_cosine", "c_norm", "grad_norm", "probe_loss"):
      np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=1e-5, err_msg=f"{k}@{i}")


# -------------------------------------------------------------------- command line


@pytest.mark.slow
def test_mec_multicrop_smoke_from_the_command_line(tmp_path, cifar_path, compile_cache):
  proc = run_main("configs/mec_cifar10.py:smoke,multicrop", tmp_path,
                  f"--config.data.path={cifar_path}", cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "loss" in r]
  assert train_rows[-1]["step"] == 12 and np.isfinite([r["loss"] for r in train_rows]).all()
  assert "knn_top1" in rows[-1] and "probe_top1" in rows[-1]
  first, last = train_rows[0], train_rows[-1]
  trace = {k: [round(r[k], 4) for r in train_rows] for k in
           ("loss", "pos_cosine", "probe_loss", "effective_rank", "embedding_std")}
  # It learns: the loss falls and the views' predictions align with their teacher's
  # embeddings (measured: loss 0.006 -> -0.004, cosine -0.005 -> 0.005 on the shared
  # CIFAR-10; 0.002 -> -0.035 and -0.002 -> 0.040 on the synthetic archive), the online
  # probe's loss falls; and no collapse (effective rank 1 and embedding std 0 would be;
  # rank 18-22 and std 0.12 measured).
  assert last["loss"] < first["loss"] - 0.005, trace
  assert last["pos_cosine"] > first["pos_cosine"] + 0.005, trace
  assert last["probe_loss"] < first["probe_loss"] - 0.05, trace
  assert min(trace["effective_rank"]) > 4 and min(trace["embedding_std"]) > 0.02, trace
