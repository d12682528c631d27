"""Offline evaluations: metrics against sklearn / a direct devkit loop, the probe head, the
feature cache, the CIFAR subsets, the configs' recipes, and one smoke pre-training run
probed (linear, cached features) and fine-tuned (10% subset) from the command line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import REPO, run_main, write_image_tree
from mecjax import checkpoint as ckpt_lib
from mecjax import configlib, data as data_lib, models, optim, train
from mecjax.data import sources
from mecjax.evaluators import downstream, linear
from mecjax.evaluators import metrics as M
from mecjax.tasks import run_task

# One worker runs this module, so the smoke pre-training run (module fixture) happens once.
pytestmark = pytest.mark.xdist_group("linear")


def cfg(spec):
  return configlib.load(str(REPO / "configs" / spec))


def rows_of(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ metrics


def test_top_k_and_mean_per_class_match_sklearn():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(300, 7))
  labels = rng.integers(0, 7, 300)
  labels[:40] = 2   # unbalanced classes: mean-per-class differs from top-1
  scores[:40, 2] += 1.5
  for k in (1, 3, 5):
    assert M.top_k_accuracy(scores, labels, k) == pytest.approx(
        skm.top_k_accuracy_score(labels, scores, k=k, labels=range(7)))
  mpc = M.mean_per_class_accuracy(scores, labels)
  assert mpc == pytest.approx(skm.balanced_accuracy_score(labels, scores.argmax(1)))
  assert abs(mpc - M.top_k_accuracy(scores, labels, 1)) > 1e-3


def _voc07_ap_reference(scores, targets):
  """The VOC2007 devkit's VOCevalcls 11-point AP, transcribed as a plain loop."""
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  tp = fp = 0
  prec, rec = [], []
  for i in order:
    tp, fp = tp + targets[i], fp + (1 - targets[i])
    prec.append(tp / (tp + fp))
    rec.append(tp / sum(targets))
  ap = 0.0
  for t in [x / 10 for x in range(11)]:
    ps = [p for p, r in zip(prec, rec) if r >= t]
    ap += (max(ps) if ps else 0.0) / 11
  return ap


def test_voc_11_point_map_matches_the_devkit_loop():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(60, 5))
  targets = (rng.random((60, 5)) < 0.3).astype(int)
  scores += 1.2 * targets
  per_class = [_voc07_ap_reference(list(scores[:, c]), list(targets[:, c])) for c in range(5)]
  assert M.map_11(scores, targets) == pytest.approx(np.mean(per_class), abs=1e-12)
  # A perfect ranking has AP 1; one positive ranked 2nd of 2 has precision 1/2 everywhere.
  assert M.average_precision_11(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == 1.0
  assert M.average_precision_11(np.array([2.0, 1.0]), np.array([0, 1])) == pytest.approx(0.5)
  row = M.classification_metrics(scores, targets, "linear", "map11", multi_label=True)
  assert set(row) == {"linear_map11"}
  with pytest.raises(configlib.ConfigError, match="config.linear.metric='top1'"):
    M.classification_metrics(scores, targets, "linear", "top1", multi_label=True)


# ------------------------------------------------------------------ head, cache, subsets


def test_probe_head_is_bn_without_affine_eps_1e6_then_linear():
  head = downstream.LinearHead(4, bn_eps=1e-6)
  x = np.random.default_rng(2).normal(size=(16, 3)).astype(np.float32)
  x[:, 1] = 1e-3 * x[:, 1]   # variance 1e-6: eps 1e-6 vs the default 1e-5 matters here
  variables = head.init(jax.random.key(0), x, train=False)
  assert jax.tree.map(np.shape, variables["params"]) == {"linear": {"bias": (4,),
                                                                    "kernel": (3, 4)}}
  assert set(variables["batch_stats"]["bn"]) == {"mean", "var"}   # no scale, no bias
  out, _ = head.apply(variables, x, train=True, mutable=["batch_stats"])
  w, b = variables["params"]["linear"]["kernel"], variables["params"]["linear"]["bias"]
  whitened = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-6)
  np.testing.assert_allclose(out, whitened @ w + b, rtol=2e-4, atol=1e-5)
  assert np.std(np.asarray(w)) == pytest.approx(0.01, rel=0.5) and not np.any(b)


@pytest.mark.slow
def test_cached_features_equal_fresh_ones_and_are_reused(tmp_path):
  c = cfg("linear_cifar10.py:smoke")
  c.init.required = False   # a random-init encoder is enough here
  c.model.width = 0.125
  c.projector.hidden, c.projector.out_dim = (16,), 16   # small heads: a cheap init
  c.predictor.hidden, c.predictor.out_dim = (8,), 16
  root = write_image_tree(tmp_path / "data", {"train": 3}, classes=("a", "b"))
  c.data.path = str(root)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  recipe = data_lib.get_recipe(c.aug, 32, 0)
  source = downstream.encoder_source(c)
  encoder, variables = downstream.load_encoder(c, source)
  load = lambda split, n: downstream.load_split(c, split, n)
  args = (str(tmp_path / "run"), c, source, "train", None, load, encoder, variables, recipe,
          mesh)
  feats, labels, classes = linear.cached_features(*args)
  src = load("train", None)
  images = jnp.stack([src[i]["image"] for i in range(len(src))])
  fresh = encoder.apply(variables, recipe.eval_view(images), train=False)
  np.testing.assert_allclose(feats, fresh, rtol=1e-5, atol=1e-6)
  assert classes == 2 and list(labels) == [0, 0, 0, 1, 1, 1]
  path = tmp_path / "run" / "features" / "train.npz"
  stamp = os.stat(path).st_mtime_ns
  again, _, _ = linear.cached_features(*args)
  np.testing.assert_array_equal(again, feats)
  assert os.stat(path).st_mtime_ns == stamp   # read back, not recomputed


def test_cifar_subsets_are_class_balanced_and_deterministic():
  labels = np.repeat(np.arange(10), 5000)   # the folder order: class by class
  for variant, per_class in (("10pct", 500), ("1pct", 50)):
    n = cfg(f"semisup_cifar10.py:{variant}").data.max_train_examples
    keep = sources.balanced_subset(labels, n)
    assert np.array_equal(np.bincount(labels[keep]), np.full(10, per_class))
    assert np.array_equal(keep, sources.balanced_subset(labels, n))
  # The subset variants keep smoke's cap, in either order.
  assert cfg("semisup_cifar10.py:smoke,10pct").data.max_train_examples == 256
  assert cfg("semisup_cifar10.py:10pct,smoke").data.max_train_examples == 256


# ------------------------------------------------------------------ configs


def test_linear_configs_hold_the_mec_recipe():
  for spec, size, recipe, cached in (("linear_cifar10.py", 32, "cifar", True),
                                     ("linear_imagenet.py", 224, "mocov3", False)):
    c = cfg(spec)
    assert c.task == "linear" and c.init.required and not c.init.heads
    assert (c.batch_size, c.total_epochs, c.optim.name) == (4096, 100, "sgd")
    assert optim.scaled_lr(c.optim.base_lr, c.batch_size) == pytest.approx(0.03 * 16)
    assert (c.optim.momentum, c.optim.weight_decay, c.optim.end_lr_factor) == (0.9, 0.0, 0.0)
    assert c.optim.warmup_steps is None and c.optim.warmup_epochs is None
    assert c.linear.bn_eps == 1e-6 and c.linear.cache_features is cached
    assert (c.data.image_size, c.aug.name, tuple(c.aug.crop_scale)) == (size, recipe,
                                                                        (0.08, 1.0))
    assert len(c.aug.blur_prob) == c.aug.num_global_views == 1   # one view per image
  assert cfg("linear_cifar10.py:augment").linear.cache_features is False
  assert cfg("linear_imagenet.py:lars").optim.name == "lars"
  assert cfg("linear_imagenet.py").model.name == "resnet50"


def test_semisup_configs_hold_the_mec_appendix_recipe():
  for spec in ("semisup_cifar10.py", "semisup_imagenet.py"):
    c = cfg(spec)
    assert c.task == "finetune" and c.init.required
    assert (c.batch_size, c.total_epochs, c.optim.name, c.optim.weight_decay) == (
        1024, 50, "sgd", 0.0)
    assert optim.scaled_lr(c.optim.base_lr, c.batch_size) == pytest.approx(0.05)
  c = cfg("semisup_cifar10.py:1pct")
  assert c.batch_size == 128 and optim.scaled_lr(c.optim.base_lr, 128) == pytest.approx(
      0.05 * 128 / 1024)
  assert cfg("semisup_imagenet.py:1pct").data.name == "imagenet2012_subset/1pct"
  c = cfg("semisup_imagenet.py:10pct")
  assert (c.data.name, c.data.eval_split) == ("imagenet2012_subset/10pct", "validation")


def test_transfer_config_resolves_each_data_set():
  expected = {"food101": ("food101", "validation", "top1"),
              "cars": ("cars196", "test", "top1"),
              "aircraft": ("fgvc_aircraft", "test", "mean_per_class"),
              "voc2007": ("voc/2007", "test", "map11"),
              "pets": ("oxford_iiit_pet", "test", "mean_per_class"),
              "caltech101": ("caltech101", "test", "mean_per_class"),
              "flowers": ("oxford_flowers102", "test", "mean_per_class"),
              "sun397": ("sun397/standard-part1-120k", "test", "top1"),
              "dtd": ("dtd", "test", "top1"), "cifar100": ("cifar100", "test", "top1")}
  for name, (tfds_name, eval_split, metric) in expected.items():
    c = cfg(f"transfer_linear.py:{name}")
    assert (c.data.name, c.data.eval_split, c.linear.metric) == (tfds_name, eval_split,
                                                                 metric), name
    assert c.linear.multi_label == (name == "voc2007") and c.task == "linear"
  assert cfg("transfer_linear.py:flowers").data.train_split == "train+validation"
  assert cfg("transfer_linear.py:pets").aug.name == "mocov3"
  c = cfg("transfer_linear.py:cifar100")
  assert (c.aug.name, c.data.in_memory, c.data.image_size) == ("cifar", False, 224)


def test_tasks_are_dispatched_by_name():
  c = cfg("linear_cifar10.py:smoke")
  with pytest.raises(configlib.ConfigError, match="config.task='linear': train.run"):
    train.run(c, "/nonexistent")
  c.task = "probe"
  with pytest.raises(configlib.ConfigError, match="config.task='probe': expected one of"):
    run_task(c, "/nonexistent")


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cifar_path, compile_cache):
  """One MEC smoke pre-training run from the command line (its checkpoint at step 12)."""
  workdir = tmp_path_factory.mktemp("pretrain") / "smoke"
  proc = run_main("configs/mec_cifar10.py:smoke", workdir, f"--config.data.path={cifar_path}",
                  "--config.knn.enabled=False", cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_linear_probe_and_semisup_smoke_from_the_command_line(smoke_run, tmp_path,
                                                              cifar_path, compile_cache):
  data = f"--config.data.path={cifar_path}"
  init = f"--config.init.workdir={smoke_run}"
  before = ckpt_lib.read_state(str(smoke_run))["params"]["encoder"]
  proc = run_main("configs/linear_cifar10.py:smoke", tmp_path / "lin", data, init,
                  cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = rows_of(tmp_path / "lin")
  trained = [r for r in rows if "linear_loss" in r]
  assert [r["step"] for r in trained] == [2, 4, 6, 8]
  assert np.isfinite([r["linear_loss"] for r in trained]).all()
  last = rows[-1]
  assert last["step"] == 8 and 0 <= last["linear_top1"] <= last["linear_top5"] <= 1
  # Only the head is trained and saved; the pre-training run's encoder is untouched.
  state = ckpt_lib.read_state(str(tmp_path / "lin"))
  assert set(state["params"]) == {"linear"} and set(state["batch_stats"]) == {"bn"}
  after = ckpt_lib.read_state(str(smoke_run))["params"]["encoder"]
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert (tmp_path / "lin" / "features" / "train.npz").exists()

  proc = run_main("configs/semisup_cifar10.py:smoke,10pct", tmp_path / "ft", data, init,
                  cache=compile_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "init: encoder: loaded" in proc.stdout
  rows = rows_of(tmp_path / "ft")
  assert np.isfinite([r["finetune_loss"] for r in rows if "finetune_loss" in r]).all()
  assert rows[-1]["step"] == 8 and 0 <= rows[-1]["finetune_top1"] <= 1
  state = ckpt_lib.read_state(str(tmp_path / "ft"))
  assert set(state["params"]) == {"encoder", "head"}
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), state["params"]["encoder"],
                         before)
  assert any(jax.tree.leaves(changed))   # fine-tuning trains the encoder too


@pytest.mark.slow
def test_transfer_probe_on_a_synthetic_folder_reports_mean_per_class(smoke_run, tmp_path):
  classes = ("abyssinian", "beagle", "boxer")
  root = write_image_tree(tmp_path / "pets", {"train": 12, "test": 4}, classes=classes)
  c = cfg("transfer_linear.py:pets,smoke")
  c.data.path = str(root)
  c.init.workdir = str(smoke_run)
  row = run_task(c, str(tmp_path / "probe"))
  assert row["step"] == 8
  assert set(row) >= {"linear_top1", "linear_top5", "linear_mean_per_class"}
  # The test split is balanced (4 images per class), so the mean of the per-class recalls is
  # the top-1 accuracy; top-5 of three classes counts every row.
  assert row["linear_mean_per_class"] == pytest.approx(row["linear_top1"], abs=1e-6)
  assert row["linear_top5"] == 1.0
  # A rerun of a finished probe does nothing and returns the same row.
  assert run_task(c, str(tmp_path / "probe"))["linear_mean_per_class"] == \
      row["linear_mean_per_class"]
  assert models.get_encoder(c.model).width == 0.125   # the run's architecture was adopted
