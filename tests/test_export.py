"""``python -m mecjax.export``: a run's ResNet-50 (online or EMA teacher) as a torchvision
state dict, safetensors and a Detectron2 pickle, from a checkpoint written here."""

from __future__ import annotations

import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, cli_env, require_torch

torch = require_torch()

from mecjax import checkpoint as ckpt_lib  # noqa: E402
from mecjax import export, optim  # noqa: E402
from mecjax.models import resnet50  # noqa: E402
from test_torch_port import IMAGE, close, images, torch_resnet50  # noqa: E402,F401



def perturbed(tree, seed, scale):
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [np.asarray(x) * (1 + scale * rng.normal(size=x.shape))
                                      .astype(np.float32) for x in leaves])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory whose checkpoint holds a ResNet-50 with random BN statistics and an EMA
  target (in the optimiser state, as the loop keeps it) that differs from the online net."""
  enc = resnet50()
  v = jax.jit(lambda k: enc.init(k, jnp.zeros((2, IMAGE, IMAGE, 3)), train=True))(
      jax.random.key(3))
  params = {"encoder": perturbed(v["params"], 1, 0.3)}
  stats = {"encoder": jax.tree.map(
      lambda x: np.abs(np.asarray(x) + np.random.default_rng(2).normal(size=x.shape))
      .astype(np.float32) + 0.1, v["batch_stats"])}
  tx = optax.chain(optax.sgd(0.1), optim.ema_target(lambda count: 0.99))
  opt_state = tx.init(params)
  target = {"encoder": perturbed(params["encoder"], 4, 0.2)}
  opt_state = (opt_state[0], opt_state[1]._replace(target=target))
  target_stats = {"encoder": perturbed(stats["encoder"], 5, 0.2)}
  state = {"step": np.int32(7), "params": params, "opt_state": opt_state,
           "model_state": {"batch_stats": stats, "target_batch_stats": target_stats}}
  workdir = tmp_path_factory.mktemp("run")
  meta = {"method": "mec", "model": {"name": "resnet50", "width": 1.0}}
  saver = ckpt_lib.Checkpointer(str(workdir), keep=1)
  saver.save(7, state, {}, meta)
  saver.close()
  feats = jax.jit(lambda p, s, x: enc.apply({"params": p, "batch_stats": s}, x, train=False))
  return workdir, feats, (params, stats), (target, target_stats)


def cli(*args):
  return subprocess.run([sys.executable, "-m", "mecjax.export", *args], cwd=REPO,
                        env=cli_env(1), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("target", [False, True])
def test_torchvision_export_loads_with_the_same_features(run_dir, tmp_path, images, target):
  workdir, feats, online, teacher = run_dir
  out = tmp_path / "r50.pth"
  proc = cli(f"--workdir={workdir}", "--format=torchvision", f"--out={out}",
             *(["--target"] if target else []))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert ("EMA target" if target else "online") in proc.stdout
  model = torch_resnet50(seed=9)   # other weights: everything must come from the file
  missing, unexpected = model.load_state_dict(torch.load(out, weights_only=True), strict=False)
  assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
  with torch.no_grad():
    got = model.features(torch.from_numpy(images[0])).numpy()
  params, stats = teacher if target else online
  want = np.asarray(feats(params["encoder"], stats["encoder"], images[1]))
  close(got, want)
  other = teacher if not target else online
  assert np.abs(np.asarray(feats(other[0]["encoder"], other[1]["encoder"], images[1]))
                - got).max() > 1e-3   # the other network really differs


@pytest.mark.slow
def test_safetensors_and_detectron2_layouts(run_dir, tmp_path):
  from safetensors.numpy import load_file
  workdir, _, (params, stats), _ = run_dir
  tv = export.export(str(workdir), "torchvision", str(tmp_path / "a.pth"))
  assert cli(f"--workdir={workdir}", "--format=safetensors",
             f"--out={tmp_path / 'a.safetensors'}").returncode == 0
  st = load_file(str(tmp_path / "a.safetensors"))
  assert set(st) == set(tv)
  for k in tv:
    np.testing.assert_array_equal(st[k], tv[k])

  assert cli(f"--workdir={workdir}", "--format=detectron2",
             f"--out={tmp_path / 'a.pkl'}").returncode == 0
  with open(tmp_path / "a.pkl", "rb") as f:
    d2 = pickle.load(f)
  assert d2["matching_heuristics"] is True and "__author__" in d2
  model = d2["model"]
  assert all(isinstance(v, np.ndarray) for v in model.values())
  # The names Detectron2's ResNet (build_resnet_backbone) has, in PyTorch (OIHW) layout.
  assert model["stem.conv1.weight"].shape == (64, 3, 7, 7)
  for k in ("stem.conv1.norm.weight", "stem.conv1.norm.bias", "stem.conv1.norm.running_mean",
            "stem.conv1.norm.running_var", "res2.0.shortcut.weight",
            "res2.0.shortcut.norm.running_var", "res3.0.conv2.weight", "res5.2.conv3.norm.bias"):
    assert k in model, k
  assert model["res5.0.shortcut.weight"].shape == (2048, 1024, 1, 1)
  assert model["res4.5.conv2.weight"].shape == (256, 256, 3, 3)
  assert not any("layer" in k or "bn" in k or "downsample" in k or "num_batches" in k
                 for k in model)
  # One Detectron2 key per torchvision tensor (the BN counters dropped), same values.
  counters = [k for k in tv if k.endswith("num_batches_tracked")]
  assert len(model) == len(tv) - len(counters) == 265
  np.testing.assert_array_equal(model["res3.1.conv2.norm.running_mean"],
                                tv["layer2.1.bn2.running_mean"])
  np.testing.assert_array_equal(model["res2.0.shortcut.norm.weight"],
                                tv["layer1.0.downsample.1.weight"])
  np.testing.assert_array_equal(
      model["stem.conv1.weight"],
      np.transpose(np.asarray(params["encoder"]["conv1"]["kernel"]), (3, 2, 0, 1)))


@pytest.mark.slow
def test_export_refusals_are_one_line(run_dir, tmp_path):
  workdir = run_dir[0]
  proc = cli(f"--workdir={tmp_path / 'nothing'}", "--format=torchvision",
             f"--out={tmp_path / 'x.pth'}")
  assert proc.returncode == 2 and "checkpoints" in proc.stderr
  proc = cli(f"--workdir={workdir}", "--format=onnx", f"--out={tmp_path / 'x'}")
  assert proc.returncode == 2 and "torchvision" in proc.stderr
  assert not (tmp_path / "x.pth").exists()


def test_only_torchvision_depths_export():
  from mecjax import export
  export.check_torchvision_layout("w", {"name": "resnet18_cifar", "stage_sizes": None})
  export.check_torchvision_layout("w", {"name": "resnet50", "stage_sizes": [3, 4, 6, 3]})
  with pytest.raises(export.ExportError, match=r"^w: config.model.stage_sizes=\(1, 1, 1, 1\)"):
    export.check_torchvision_layout("w", {"name": "resnet50", "stage_sizes": [1, 1, 1, 1]})
  with pytest.raises(export.ExportError, match="not a ResNet"):
    export.check_torchvision_layout("w", {"name": "vit_small"})
