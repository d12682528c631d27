"""The methods of the loop: what each adds around its loss (SwAV's prototypes and queue, the
MEC regulariser, view pairing), every method's update on 1 and 8 devices, and smoke runs
from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from conftest import REPO, cli_env, sharded_updates
from mecjax import configlib, losses, methods

BATCH, SIZE = 16, 16


def build(spec, **overrides):
  config = configlib.load(str(REPO / "configs" / spec))
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  run = methods.RunInfo(global_batch=BATCH, steps_per_epoch=4, total_steps=12)
  method = methods.get_method(config, run)
  params, state = method.init(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
  return method, method.project_params(params), state


def views(seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32) for _ in range(2)]


# ------------------------------------------------------------------- a new method

TOY_METHOD = '''
"""Align the two views' projections, loss = -scale mean cos(z1, z2): a method that is only
this file."""

import jax.numpy as jnp

from mecjax.methods.base import Method


class ToyAlign(Method):
  name = "toy_align"

  @staticmethod
  def defaults():
    return dict(scale=1.0)

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    z1, z2 = (o["embedding"] / jnp.linalg.norm(o["embedding"], axis=-1, keepdims=True)
              for o in online)
    cos = jnp.mean(jnp.sum(z1 * z2, axis=-1))
    loss = -self.config.toy_align.scale * cos
    return loss, self.output({"toy_cos": cos}, {"batch_stats": batch_stats}, online), [(z1, z2)]
'''


def test_a_new_method_is_one_new_file_and_its_config_keys(tmp_path, monkeypatch):
  """A module dropped beside the methods (here a folder added to the package's path) is
  found by its class's name, brings its config block, and trains in the loop's own step
  with no other edit."""
  from mecjax import lowering
  folder = tmp_path / "more_methods"
  folder.mkdir()
  (folder / "toy_align.py").write_text(TOY_METHOD)
  monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
  try:
    monkeypatch.setattr(methods, "METHODS", methods.discover())
  finally:
    sys.modules.pop("mecjax.methods.toy_align", None)
  assert methods.METHODS["toy_align"].__name__ == "ToyAlign" and "mec" in methods.METHODS
  config = configlib.load(str(REPO / "configs" / "vicreg_cifar10.py:smoke"))
  assert config.toy_align.scale == 1.0   # the block its defaults() declares
  assert "toy_align.scale" in configlib.unknown_key_message(config, "toy_align.scal")
  config.method = "toy_align"
  config.toy_align.scale = 2.0
  s = lowering.build_step(config, 8)
  state, batch = lowering.concrete_inputs(s)
  before = jax.tree.map(np.asarray, state.params)
  for _ in range(2):   # the learning rate warms up from 0 at step 0
    state, metrics = s.step(state, batch)
  # The loop's step differentiated this file's objective with the configured scale.
  np.testing.assert_allclose(float(metrics["loss"]), -2.0 * float(metrics["toy_cos"]),
                             rtol=1e-5)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params,
                       before)
  assert max(jax.tree.leaves(moved["projector"])) > 0


# ------------------------------------------------------------------------------ SwAV


@pytest.mark.slow
def test_swav_prototypes_are_unit_norm_and_frozen_then_trained():
  method, params, state = build("swav_cifar10.py:smoke")
  kernel = params["predictor"]["prototypes"]
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
  v = views()

  def proto_grad(step):
    g = jax.grad(lambda p: method.loss(p, state, None, v, jnp.int32(step))[0])(params)
    return float(jnp.abs(g["predictor"]["prototypes"]).max())

  assert method.freeze_steps == 3
  assert proto_grad(2) == 0.0          # frozen during the first 3 steps
  assert proto_grad(3) > 1e-6          # trained afterwards
  moved = jax.tree.map(lambda p: p * 3.0, params)
  np.testing.assert_allclose(
      np.linalg.norm(method.project_params(moved)["predictor"]["prototypes"], axis=0), 1.0,
      rtol=1e-6)


def test_swav_queue_fills_newest_first_and_is_used_once_full():
  method, params, state = build("swav_cifar10.py:smoke", **{"swav.queue_size": 2 * BATCH + 5})
  assert method.queue_len == 2 * BATCH    # rounded down to whole batches, as the official code
  assert method.queue_start == 2
  loss = jax.jit(method.loss)

  _, out = loss(params, state, None, views(0), jnp.int32(1))   # before the queue starts
  assert not np.any(out.state["queue"]) and int(out.state["queue_filled"]) == 0
  first, out1 = loss(params, state, None, views(0), jnp.int32(2))
  assert int(out1.state["queue_filled"]) == BATCH
  _, out2 = loss(params, out1.state, None, views(1), jnp.int32(3))
  assert int(out2.state["queue_filled"]) == 2 * BATCH
  # Newest first: the rows pushed at step 2 moved down one batch.
  np.testing.assert_array_equal(out2.state["queue"][:, BATCH:], out1.state["queue"][:, :BATCH])
  emb = method.forward_views(params, state["batch_stats"], views(0), method="embed")[0]
  want = np.asarray(emb[0]["embedding"]) / np.linalg.norm(emb[0]["embedding"], axis=1,
                                                          keepdims=True)
  np.testing.assert_allclose(out1.state["queue"][0, :BATCH], want, rtol=1e-5, atol=1e-6)
  assert float(out1.metrics["queue_in_use"]) == 0.0
  # Full: the same batch now gets codes from a Sinkhorn over queue + batch, a different loss.
  with_queue, out3 = loss(params, out2.state, None, views(0), jnp.int32(4))
  assert float(out3.metrics["queue_in_use"]) == 1.0
  assert abs(float(with_queue) - float(first)) > 1e-4


def test_swav_codes_match_sinkhorn_over_queue_and_batch():
  method, params, state = build("swav_cifar10.py:smoke", **{"swav.queue_size": BATCH})
  rng = np.random.default_rng(3)
  queue = rng.normal(size=state["queue"].shape).astype(np.float32)
  state = dict(state, queue=jnp.asarray(queue), queue_filled=jnp.int32(BATCH))
  v = views(2)
  got, _ = method.loss(params, state, None, v, jnp.int32(8))
  outs, _ = method.forward_views(params, state["batch_stats"], v, method="embed")
  kernel = params["predictor"]["prototypes"]
  emb = [o["embedding"] / jnp.linalg.norm(o["embedding"], axis=1, keepdims=True) for o in outs]
  scores = [e @ kernel for e in emb]
  codes = [losses.sinkhorn(jnp.concatenate([queue[i] @ kernel, scores[i]]))[BATCH:]
           for i in range(2)]
  want = losses.swav_loss(scores, codes, temperature=0.1)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


# ------------------------------------------------------------------ regulariser, pairing


@pytest.mark.parametrize("spec", ["simclr_cifar10.py:smoke,mec", "simsiam_cifar10.py:smoke,mec"])
def test_mec_regulariser_adds_the_mec_loss_of_the_method_pairs(spec):
  method, params, state = build(spec, **{"regularizer.weight": 0.5})
  plain, p2, s2 = build(spec.replace(",mec", ""))
  v = views(4)
  step = jnp.int32(5)
  total, out = method.loss(params, state, None, v, step)
  objective, _, pairs = plain.objective(params, state, None, v, step)
  lamda_inv = method.regularizer.schedule(pairs[0][0].shape[-1])(step)
  reg = sum(losses.mec_loss(a, b, lamda_inv=lamda_inv, order=4) for a, b in pairs) / len(pairs)
  np.testing.assert_allclose(float(total), float(objective + 0.5 * reg), rtol=1e-5)
  np.testing.assert_allclose(float(out.metrics["objective"]), float(objective), rtol=1e-6)
  np.testing.assert_allclose(float(out.metrics["reg_loss"]), float(reg), rtol=1e-5)
  # 8 x eps_sq / d warm-up start: lamda_inv = 8 m eps_sq / d at step 0.
  d = pairs[0][0].shape[-1]
  np.testing.assert_allclose(float(method.regularizer.schedule(d)(0)),
                             8 * BATCH * method.config.mec.eps_sq / d, rtol=1e-6)


@pytest.mark.slow
def test_simsiam_pairs_stop_the_target_gradient():
  method, params, state = build("simsiam_cifar10.py:smoke,mec")
  v = views(5)

  def reg_only(p):
    _, _, pairs = method.objective(p, state, None, v, jnp.int32(6))
    return sum(losses.mec_loss(a, b, lamda_inv=100.0) for a, b in pairs)
  g = jax.grad(reg_only)(params)
  # The pairs are (prediction, stop-gradient projection): gradient reaches the projector only
  # through the prediction branch, and the predictor does get one.
  assert float(optax.global_norm(g["predictor"])) > 0
  assert float(optax.global_norm(g["projector"])) > 0


def test_mec_takes_no_regulariser_and_music_checks_its_segments():
  with pytest.raises(configlib.ConfigError, match="regularizer"):
    build("mec_cifar10.py:smoke", **{"regularizer.name": "mec"})
  with pytest.raises(configlib.ConfigError, match="segment_size"):
    build("music_cifar10.py:smoke", **{"music.segment_size": 24})
  with pytest.raises(configlib.ConfigError, match="regularizer.name"):
    build("simclr_cifar10.py:smoke", **{"regularizer.name": "nope"})


@pytest.mark.slow
def test_byol_uses_an_ema_target_and_the_others_do_not():
  uses = {name: cls.uses_target for name, cls in methods.METHODS.items()}
  assert uses == {"mec": True, "byol": True, "music": False, "simsiam": False,
                  "barlow_twins": False, "vicreg": False, "swav": False, "simclr": False}
  method, params, state = build("byol_cifar10.py:smoke")
  target = jax.tree.map(lambda p: p + 0.05, params)
  v = views(6)
  a, _ = method.loss(params, state, target, v, jnp.int32(0))
  b, _ = method.loss(params, state, params, v, jnp.int32(0))
  assert abs(float(a) - float(b)) > 1e-5     # the target parameters feed the loss
  g = jax.grad(lambda t: method.loss(params, state, t, v, jnp.int32(0))[0])(target)
  assert float(optax.global_norm(g)) == 0.0  # and get no gradient


@pytest.mark.parametrize("spec", ["music_cifar10.py:smoke", "barlow_twins_cifar10.py:smoke",
                                  "vicreg_cifar10.py:smoke", "simclr_cifar10.py:smoke"])
def test_symmetric_methods_are_symmetric_in_the_views(spec):
  method, params, state = build(spec)
  v = views(7)
  # BN statistics are per view, so swapping the views swaps the pairs exactly.
  a, _ = method.loss(params, state, None, v, jnp.int32(0))
  b, _ = method.loss(params, state, None, v[::-1], jnp.int32(0))
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


# ------------------------------------------------------------ every config, 1 vs 8 devices

# MEC's update on 1 vs 8 devices: tests/test_multicrop.py (with local views, so the two
# global views' path too) and tests/test_train.py (command line).
METHOD_SMOKES = ["music_cifar10.py:smoke", "simsiam_cifar10.py:smoke",
                 "byol_cifar10.py:smoke", "barlow_twins_cifar10.py:smoke",
                 "vicreg_cifar10.py:smoke", "swav_cifar10.py:smoke", "simclr_cifar10.py:smoke,mec"]


def run_updates(spec, mesh, steps=2):
  """Metrics of ``steps`` train updates (the loop's ``make_update``) on fixed views, with
  the state replicated and the batch split over ``mesh``.

  The encoder is a one-block ViT: what differs between the methods is their heads and loss
  (cross-device negatives, Sinkhorn, queue, the heads' BatchNorm), and a ResNet-18 doubles
  the compilation (CI time). The ResNet's synchronised BatchNorm on 1 vs 8 devices is
  compared in tests/test_multicrop.py (MEC) and tests/test_train.py (command line)."""
  config = configlib.load(str(REPO / "configs" / spec))
  with config.unlocked():
    config.model.name = "vit_tiny_cifar"
    config.model.stage_sizes = None         # the smoke ResNet's blocks per stage
    config.model.depth = 1
    config.model.width = 0.25               # 48 wide (a multiple of 4 and of its one head)
    config.model.num_heads = 1
    config.swav.queue_size = 2 * BATCH      # one global batch: full after the first step
    config.swav.queue_start_steps = 0
  # The rng draws each step's views, then its labels (sharded_updates), as before.
  return sharded_updates(
      config, mesh, lambda i, rng: [rng.normal(size=(2 * BATCH, SIZE, SIZE, 3)).astype(
          np.float32) for _ in range(2)], global_batch=2 * BATCH, image_size=SIZE, steps=steps)


@pytest.mark.slow
@pytest.mark.parametrize("spec", METHOD_SMOKES)
def test_every_method_updates_alike_on_one_and_eight_devices(spec):
  devices = jax.devices()
  assert len(devices) == 8
  one = run_updates(spec, Mesh(np.asarray(devices[:1]), ("data",)))
  eight = run_updates(spec, Mesh(np.asarray(devices), ("data",)))
  for i, (a, b) in enumerate(zip(one, eight)):
    assert np.isfinite(a["loss"])
    for k in a:
      # The effective rank hangs on the smallest singular values; accuracies on argmaxes
      # that a 1e-7 difference may flip.
      if k == "effective_rank" or k.endswith("top1") or k.endswith("_acc"):
        continue
      np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=1e-5, err_msg=f"{spec} {k}@{i}")
  if spec.startswith("swav"):
    assert [float(m["queue_in_use"]) for m in one] == [0.0, 1.0]


# The command-line form of a config's smoke variant, on one device. 1 vs 8 devices: every
# method's update in-process above, and MEC's whole run from the command line in
# tests/test_train.py. The other methods' configs are covered without a process each (CI
# time): they load and name what exists (tests/test_config.py), their update runs on 1 and 8
# devices above, VICReg / SwAV / SimSiam train through train.run in tests/test_e2mc.py, and
# the ImageNet host-crop recipe runs from the command line in tests/test_train.py.
SMOKE_CONFIGS = ["music_cifar10.py:smoke", "swav_cifar10.py:smoke", "simclr_cifar10.py:smoke,mec"]


def read_rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def run_cli(spec, workdir, cifar_path, devices, cache):
  cmd = [sys.executable, "-m", "mecjax.main", f"--config=configs/{spec}",
         f"--workdir={workdir}", f"--config.data.path={cifar_path}"]
  proc = subprocess.run(cmd, cwd=REPO, env=cli_env(devices, cache), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, f"{devices} devices: exit {proc.returncode}\n{proc.stderr[-3000:]}"
  return read_rows(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SMOKE_CONFIGS)
def test_smoke_config_runs_from_the_command_line(spec, tmp_path, cifar_path, compile_cache):
  rows = run_cli(spec, tmp_path, cifar_path, 1, compile_cache)
  train_rows = [r for r in rows if "loss" in r]
  assert train_rows and train_rows[-1]["step"] == 12
  assert np.isfinite([r["loss"] for r in train_rows]).all()
  assert "knn_top1" in rows[-1] and "probe_top1" in rows[-1]
  first, last = train_rows[0], train_rows[-1]
  trace = {k: [round(r[k], 4) for r in train_rows if k in r] for k in
           ("loss", "probe_loss", "effective_rank", "embedding_std", "code_perplexity",
            "pos_cosine")}
  # The run learns: the online probe's loss (on the detached features) falls, and no
  # collapse: a collapsed batch has effective rank 1 and embedding std 0 (measured here:
  # rank 15-23 of the embedding width, std 0.10-0.14).
  assert last["probe_loss"] < first["probe_loss"] - 0.05, trace
  assert min(trace["effective_rank"]) > 8 and min(trace["embedding_std"]) > 0.05, trace
  if spec.startswith("swav"):
    # The swapped prediction improves over 12 steps (4.65 -> 4.10 measured), the codes use
    # most of the 32 prototypes (perplexity 1 is collapse; 26-32 measured), and the queue
    # joins from its start step.
    assert last["loss"] < first["loss"] - 0.2, trace
    assert min(trace["code_perplexity"]) > 16, trace
    assert first["queue_in_use"] == 0.0 and last["queue_in_use"] == 1.0
  if spec.startswith("music"):
    # MUSIC's loss stays above its bound -3 ln D_S (ideal codes) at every step.
    segment = configlib.load(str(REPO / "configs" / spec)).music.segment_size
    assert last["music_bound"] == pytest.approx(-3 * np.log(segment))
    assert all(r["loss"] > r["music_bound"] for r in train_rows), trace
    assert "music_diagonal" in last
  if spec.endswith(",mec"):
    assert "reg_loss" in last and "objective" in last
    # The two views' embeddings align as SimCLR + MEC trains (cosine 0.48 -> 0.68 measured).
    assert last["pos_cosine"] > first["pos_cosine"] + 0.1, trace
