"""E2MC continued pre-training in the one loop: the regulariser, ``config.init`` from a run
directory, the CIFAR-10 configs' smoke runs (and their ``continued`` ablation) from
checkpoints this test creates, and the pictures / kNN evaluation commands."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, cli_env, require_torch, run_main
from mecjax import checkpoint as ckpt_lib
from mecjax import configlib, initialize, losses, methods, train
from test_methods import BATCH, build, views

# One worker runs this module, so the base checkpoints (module fixture) are trained once.
pytestmark = pytest.mark.xdist_group("e2mc")


# ------------------------------------------------------------------------ the regulariser

@pytest.mark.parametrize("spec,transform,beta,gamma", [
    ("e2mc_vicreg_cifar10.py:smoke", "sigmoid", 1000.0, 100.0),
    ("e2mc_swav_cifar10.py:smoke", "gaussian_cdf", 1.0, 25.0),
    ("e2mc_simsiam_cifar10.py:smoke", "gaussian_cdf", 0.001, 0.01)])
@pytest.mark.slow
def test_e2mc_adds_the_criterion_on_the_online_embeddings(spec, transform, beta, gamma):
  method, params, state = build(spec)
  cfg = method.config
  assert (cfg.regularizer.name, cfg.e2mc.transform, cfg.e2mc.beta, cfg.e2mc.gamma) == \
      ("e2mc", transform, beta, gamma)
  plain, _, _ = build(spec.replace(":smoke", ":smoke,continued"))
  assert plain.regularizer is None
  v, step = views(3), jnp.int32(5)
  objective, out, _ = plain.objective(params, state, None, v, step)
  # The tensor the official E2MC code regularises: the projector output before any
  # normalisation.
  for o, x in zip(out.embeddings, v):
    want = plain.net.apply({"params": params, "batch_stats": state["batch_stats"]}, x,
                           train=True, method="embed", mutable=["batch_stats"])[0]
    np.testing.assert_allclose(np.asarray(o), np.asarray(want["embedding"]), rtol=1e-5,
                               atol=1e-6)
  reg, terms = losses.e2mc_loss(*out.embeddings[:2], beta=beta, gamma=gamma,
                                transform=transform)
  total, aux = method.loss(params, state, None, v, step)
  np.testing.assert_allclose(float(total), float(objective + reg), rtol=1e-5)
  np.testing.assert_allclose(float(aux.metrics["reg_entropy"]), float(terms["entropy"]),
                             rtol=1e-5)
  np.testing.assert_allclose(float(aux.metrics["reg_cov"]), float(terms["cov"]), rtol=1e-5)
  # E2MC's gradient reaches the projector through the embedding.
  g = jax.grad(lambda p: method.loss(p, state, None, v, step)[0] -
               plain.loss(p, state, None, v, step)[0])(params)
  assert float(jnp.abs(jax.tree.leaves(g["projector"])[0]).max()) > 0


def test_e2mc_protocol_in_the_configs():
  # 0.01 x the learning rate of the run it continues: the base's cpu variant (VICReg 0.3,
  # SwAV 0.0333, SimSiam 3.0, the short-run sweep's choices).
  for base, lr in (("vicreg", 0.3), ("swav", 0.0333), ("simsiam", 3.0)):
    assert configlib.load(str(REPO / "configs" / f"{base}_cifar10.py"), "cpu").optim.base_lr == lr
    c = configlib.load(str(REPO / "configs" / f"e2mc_{base}_cifar10.py"))
    assert c.method == base and c.batch_size == 512 and c.total_epochs == 10
    assert c.optim.base_lr == pytest.approx(0.01 * lr)
    assert c.optim.end_lr_factor == 1.0 and not c.optim.warmup_epochs   # constant
    assert c.init.workdir == f"runs/{base}_cifar10_cpu" and c.model.width == 0.25
  for name in ("vicreg", "swav", "simsiam"):
    c = configlib.load(str(REPO / "configs" / f"e2mc_{name}_imagenet.py"))
    assert c.model.name == "resnet50" and c.batch_size == 512 and c.total_epochs == 10
    assert c.regularizer.name == "e2mc"
    assert configlib.load(str(REPO / "configs" / f"e2mc_{name}_imagenet.py"),
                          "continued").regularizer.name is None
  c = configlib.load(str(REPO / "configs" / "e2mc_swav_cifar10.py"))
  assert not c.swav.freeze_prototypes_epochs and not c.swav.queue_start_epochs


# ------------------------------------------------------------------------ runs

def base_config(name, cifar_path, steps=2):
  c = configlib.load(str(REPO / "configs" / f"{name}_cifar10.py"), "smoke")
  c.data.path = cifar_path
  c.total_steps = steps
  c.knn.enabled = False
  c.probe.enabled = False
  c.checkpoint.every_steps = steps
  if name == "swav":
    # The queue fills from the second step, so the checkpoint holds a non-empty one.
    c.swav.queue_start_steps = 1
  return c


@pytest.fixture(scope="session")
def bases(tmp_path_factory, cifar_path):
  """Smoke-size checkpoints of VICReg, SwAV and SimSiam (2 steps each: the fewest that
  give SwAV a filled queue), in-process. Session scope: the xdist worker running this
  module may interleave other modules' tests, and a module fixture would then be built
  again (three compilations each time)."""
  root = tmp_path_factory.mktemp("bases")
  for name in ("vicreg", "swav", "simsiam"):
    train.run(base_config(name, cifar_path), str(root / name))
  return root


def rows_of(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# The command-line continuation runs once (VICReg: the loop, the ablation, the pictures and
# the kNN command). What differs for SwAV and SimSiam, the loss and the init mapping, is
# checked in-process: the loss in test_e2mc_adds_the_criterion_on_the_online_embeddings, the
# mapping and the constant schedule in test_init_loads_the_base_weights_and_refuses_mismatches.
# The runs are the e2mc notebook's smoke runs (same config, 6 steps; the pictures of 256
# examples), so the persistent compilation cache serves whichever of the two runs second.


@pytest.mark.slow
def test_continued_pretraining_smoke_runs_from_a_checkpoint(bases, tmp_path, cifar_path,
                                                            compile_cache):
  base = "vicreg"
  init = f"--config.init.workdir={bases / base}"
  one = "--config.log_every_steps=1"
  proc = run_main(f"configs/e2mc_{base}_cifar10.py:smoke", tmp_path / "e2mc",
                  f"--config.data.path={cifar_path}", init, one, cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"init: from {bases / base}" in proc.stdout and "init: encoder: loaded" in proc.stdout
  rows = rows_of(tmp_path / "e2mc")
  trained = [r for r in rows if "loss" in r]
  assert trained[-1]["step"] == 6 and np.isfinite([r["loss"] for r in trained]).all()
  assert all("reg_entropy" in r and "reg_cov" in r for r in trained)
  assert "knn_top1" in rows[-1]
  # Constant learning rate: 0.01 x the base's, scaled to batch 32.
  assert len({r["lr"] for r in trained}) == 1
  np.testing.assert_allclose(trained[0]["lr"], 0.01 * 0.3 * 32 / 256, rtol=1e-6)

  # The ablation: the same run without the E2MC terms.
  proc = run_main(f"configs/e2mc_{base}_cifar10.py:smoke,continued", tmp_path / "cont",
                  f"--config.data.path={cifar_path}", init, one, cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  cont = [r for r in rows_of(tmp_path / "cont") if "loss" in r]
  assert cont[-1]["step"] == 6 and not any("reg_entropy" in r for r in cont)
  # Same start (loaded weights, same data and augmentation): the first step's objective
  # agrees; the second differs (E2MC changed the first update).
  assert cont[0]["step"] == trained[0]["step"] == 1
  np.testing.assert_allclose(cont[0]["vicreg_invariance"], trained[0]["vicreg_invariance"],
                             rtol=1e-5)
  assert abs(cont[1]["vicreg_invariance"] - trained[1]["vicreg_invariance"]) > 1e-6

  # The pictures, from the command the README gives.
  env = cli_env(1, compile_cache)
  cmd = [sys.executable, "-m", "mecjax.evaluate", "e2mc", f"--workdir={tmp_path / 'e2mc'}",
         "--examples=256"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("e2mc_dims.png", "e2mc_neighbours.png"):
    path = tmp_path / "e2mc" / "plots" / name
    assert str(path) in proc.stdout
    with Image.open(path) as im:
      im.load()
      assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200
      # Not a blank canvas: the scatter / histograms drew something.
      assert len(np.unique(np.asarray(im.convert("L")))) > 10
  # E2MC's terms on the same images, before and after, printed and appended to the metrics:
  # finite, and the continuation moved them (6 steps of E2MC at beta 1000).
  # 256 images, or the whole test split when it is smaller (the synthetic archive a checkout
  # without the shared data uses has 160).
  with tarfile.open(cifar_path, "r:*") as tf:
    n_test = sum(1 for m in tf if m.isfile() and "/test/" in m.name)
  assert (f"E2MC terms of the embedding on {min(256, n_test)} 'test' images (sigmoid squash"
          in proc.stdout), proc.stdout[-2000:]
  terms = rows_of(tmp_path / "e2mc")[-1]
  assert terms["step"] == 6
  values = [terms[k] for k in ("eval_entropy", "eval_cov", "eval_entropy_init", "eval_cov_init")]
  assert np.isfinite(values).all() and terms["eval_cov"] >= 0
  assert terms["eval_entropy"] != terms["eval_entropy_init"]
  assert f"H {terms['eval_entropy_init']:.4f} -> {terms['eval_entropy']:.4f}" in proc.stdout

  # kNN as its own command: the monitor's protocol, so the monitor's figure.
  cmd = [sys.executable, "-m", "mecjax.evaluate", "knn", f"--workdir={tmp_path / 'e2mc'}"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "BN in eval mode" in proc.stdout and "k=20," in proc.stdout  # the run's config.knn
  last = rows_of(tmp_path / "e2mc")[-1]
  assert last["knn_k"] == 20
  np.testing.assert_allclose(last["knn_top1"], rows[-1]["knn_top1"], atol=1e-6)


@pytest.mark.slow
def test_init_loads_the_base_weights_and_refuses_mismatches(bases, cifar_path, tmp_path):
  config = configlib.load(str(REPO / "configs" / "e2mc_swav_cifar10.py"), "smoke")
  config.init.workdir = str(bases / "swav")
  run = methods.RunInfo(global_batch=BATCH, steps_per_epoch=4, total_steps=12)
  method = methods.get_method(config, run)
  params, state = method.init(jax.random.key(1), (BATCH, 16, 16, 3))
  new_params, new_state = initialize.initialize(config, method, params, state)
  src = ckpt_lib.read_state(str(bases / "swav"))
  # Everything, heads and queue included; the prototypes are renormalised on load (1e-7).
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  jax.tree.map(close, new_params, src["params"])
  jax.tree.map(np.testing.assert_array_equal, new_state, src["model_state"])
  jax.tree.map(np.testing.assert_array_equal, new_params["encoder"], src["params"]["encoder"])
  assert int(new_state["queue_filled"]) == int(src["model_state"]["queue_filled"]) > 0

  # Another method's run: the encoder comes, heads of other shapes stay initialised.
  config.init.workdir = str(bases / "vicreg")
  p2, s2 = initialize.initialize(config, method, params, state)
  jax.tree.map(np.testing.assert_array_equal, p2["encoder"],
               ckpt_lib.read_state(str(bases / "vicreg"))["params"]["encoder"])
  jax.tree.map(np.testing.assert_array_equal, p2["predictor"],
               jax.device_get(method.project_params(params))["predictor"])
  assert int(s2["queue_filled"]) == 0

  # An encoder of another width is refused, naming the parameter.
  wide = configlib.load(str(REPO / "configs" / "e2mc_swav_cifar10.py"), "smoke")
  wide.model.width = 0.25
  wide.init.workdir = str(bases / "swav")
  m3 = methods.get_method(wide, run)
  p3, st3 = m3.init(jax.random.key(1), (BATCH, 16, 16, 3))
  with pytest.raises(ckpt_lib.CheckpointMismatch, match=r"encoder.*conv1.*kernel"):
    initialize.initialize(wide, m3, p3, st3)

  # SwAV's and SimSiam's continuations (their command-line runs are VICReg's code path with
  # another loss and mapping): every weight and statistic of their own base comes, and the
  # learning rate is 0.01 x the base's, constant, scaled to batch 32.
  for name, base_lr in (("swav", 0.6), ("simsiam", 0.5)):
    cont = configlib.load(str(REPO / "configs" / f"e2mc_{name}_cifar10.py"), "smoke")
    cont.init.workdir = str(bases / name)
    m = methods.get_method(cont, run)
    assert m.regularizer is not None
    p, st = m.init(jax.random.key(2), (BATCH, 16, 16, 3))
    got_p, got_s = initialize.initialize(cont, m, p, st)
    src = ckpt_lib.read_state(str(bases / name))
    jax.tree.map(close, got_p, src["params"])
    jax.tree.map(np.testing.assert_array_equal, got_p["encoder"], src["params"]["encoder"])
    jax.tree.map(np.testing.assert_array_equal, got_s["batch_stats"],
                 src["model_state"]["batch_stats"])
    _, lr, _ = train.make_tx(cont, run, m.uses_target)
    np.testing.assert_allclose([float(lr(0)), float(lr(run.total_steps - 1))],
                               [0.01 * base_lr * BATCH / 256] * 2, rtol=1e-6)

  config.init.workdir = str(tmp_path / "nowhere")
  with pytest.raises(configlib.ConfigError, match="config.init.workdir"):
    initialize.initialize(config, method, params, state)
  config.init.workdir, config.init.torch = str(bases / "swav"), "x.pth"
  with pytest.raises(configlib.ConfigError, match="not both"):
    initialize.requested(config)


@pytest.mark.slow
def test_missing_base_run_is_one_clear_line(tmp_path, cifar_path):
  proc = run_main("configs/e2mc_simsiam_cifar10.py:smoke", tmp_path / "w",
                  f"--config.data.path={cifar_path}",
                  f"--config.init.workdir={tmp_path / 'missing'}")
  assert proc.returncode == 2
  assert "config.init.workdir" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.slow
def test_imagenet_config_continues_a_release_layout_checkpoint(tmp_path, cifar_path,
                                                                compile_cache):
  """The ImageNet SwAV config at smoke size from a PyTorch checkpoint in SwAV's release
  layout (``{"state_dict": {"module.*", "module.projection_head.*",
  "module.prototypes.weight"}}``), written here from a mecjax initialisation."""
  torch = require_torch()
  from mecjax import torch_port
  config = configlib.load(str(REPO / "configs" / "e2mc_swav_imagenet.py"), "smoke")
  run = methods.RunInfo(global_batch=BATCH, steps_per_epoch=4, total_steps=12)
  method = methods.get_method(config, run)
  params, state = jax.device_get(method.init(jax.random.key(7), (2, 64, 64, 3)))
  stats = state["batch_stats"]
  release = {f"module.{k}": v for k, v in
             torch_port.encoder_to_torch(params["encoder"], stats["encoder"]).items()}
  release.update({f"module.projection_head.{k}": v for k, v in
                  torch_port.heads_to_torch(params["projector"], stats["projector"]).items()})
  release.update({f"module.prototypes.{k}": v for k, v in torch_port.heads_to_torch(
      params["predictor"]).items()})
  path = tmp_path / "swav_release.pth.tar"
  torch.save({"epoch": 800, "state_dict": {k: torch.from_numpy(np.array(v))
                                           for k, v in release.items()}}, path)

  # Two steps, no kNN or probe: what this checks is the import and that E2MC trains on it.
  proc = run_main("configs/e2mc_swav_imagenet.py:smoke", tmp_path / "run",
                  f"--config.data.path={cifar_path}", f"--config.init.torch={path}",
                  "--config.total_steps=2", "--config.checkpoint.every_steps=2",
                  "--config.log_every_steps=1", "--config.knn.enabled=False",
                  "--config.probe.enabled=False", cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "swav release" in proc.stdout, proc.stdout[-2000:]
  rows = [r for r in rows_of(tmp_path / "run") if "loss" in r]
  assert rows[-1]["step"] == 2 and np.isfinite([r["loss"] for r in rows]).all()
  assert all("reg_entropy" in r for r in rows)

  # Without a checkpoint the config refuses to start (it continues trained weights).
  proc = run_main("configs/e2mc_swav_imagenet.py:smoke", tmp_path / "none",
                  f"--config.data.path={cifar_path}")
  assert proc.returncode == 2 and "config.init.torch" in proc.stderr
