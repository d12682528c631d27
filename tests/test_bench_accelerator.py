"""benchmarks/bench_accelerator.py --tiny runs every code path and writes the JSON it
documents (so the accelerator benchmark cannot rot between accelerator sessions)."""

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, cli_env, tar_tree, write_image_tree

STEP_FIELDS = {"case", "config", "dtype", "global_batch", "per_device_batch",
               "images_per_sec", "images_per_sec_cpu", "images_per_sec_xla", "kernels_auto",
               "step_seconds", "compile_seconds", "flops_per_step", "views",
               "peak_memory_bytes", "mfu", "largest_per_device_batch"}
RUN_FIELDS = {"data", "train_images", "test_images", "global_batch", "steps", "dtype",
              "load_seconds", "compile_seconds", "first_step_seconds", "train_seconds",
              "images_per_sec", "knn_top1", "seconds_to_knn", "final_loss"}


@pytest.mark.slow
def test_tiny_run_writes_every_field(tmp_path):
  root = tmp_path / "tree"
  write_image_tree(root, {"train": 4, "test": 2}, top="cifar10")   # 40 / 20 images
  archive = tar_tree(root, tmp_path / "cifar10.tar.gz", True)
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_accelerator.py"),
                         "--tiny", "--out", str(out), "--data", str(archive)],
                        cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "bench_accelerator.json").read_text())
  assert result["backend"] == "cpu" and result["tiny"] is True
  assert [r["case"] for r in result["steps"]] == [
      "CIFAR ResNet-18 fp32", "CIFAR ResNet-18 bf16", "ResNet-50 224 bf16",
      "ViT-S/16 224 bf16"]
  for i, r in enumerate(result["steps"]):
    assert STEP_FIELDS <= set(r), STEP_FIELDS - set(r)
    assert r["images_per_sec"] > 0 and r["flops_per_step"] > 0 and r["views"] == 2
    assert r["kernels_auto"] == "cpu" and r["images_per_sec"] == r["images_per_sec_cpu"]
    assert r["peak_memory_bytes"] is None and r["mfu"] is None   # a CPU: neither is known
    if i == 0:   # --tiny compares kernels and searches the batch on the first case only
      assert r["images_per_sec_xla"] > 0
      assert r["largest_per_device_batch"] >= r["per_device_batch"]
    else:
      assert r["images_per_sec_xla"] is None and r["largest_per_device_batch"] is None
  run = result["run"]
  assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
  assert run["data"] == str(archive) and run["train_images"] == 40 and run["test_images"] == 20
  assert run["steps"] == 2 and run["global_batch"] == 16 and math.isfinite(run["final_loss"])
  assert 0.0 <= run["knn_top1"] <= 1.0 and run["seconds_to_knn"] > run["train_seconds"] > 0
  assert "| CIFAR ResNet-18 bf16 |" in proc.stdout and "kNN top-1" in proc.stdout
