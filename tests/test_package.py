"""The package as pip builds it: the wheel holds mecjax (no configs, tests or notebooks) with
pyproject's ranges, extras and console command; installed on its own (``pip install
--no-deps --target``) it runs the smoke config from another directory, given the config's
absolute path, and the ``mecjax`` command evaluates the run."""

from __future__ import annotations

import email
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, cli_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
  # Built from a copy, so that setuptools' build/ and egg-info never land in the checkout.
  src = tmp_path_factory.mktemp("src")
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, src / name)
  shutil.copytree(REPO / "mecjax", src / "mecjax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  out = tmp_path_factory.mktemp("wheel")
  isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                         "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (path,) = out.glob("mecjax-*.whl")
  return str(path)


def test_wheel_holds_the_package_its_ranges_extras_and_command(wheel):
  import mecjax
  with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_string(zf.read(info).decode())
    entry = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
  assert {"mecjax/__init__.py", "mecjax/train.py", "mecjax/cli.py", "mecjax/data/sources.py",
          "mecjax/losses/__init__.py", "mecjax/evaluators/knn.py"} <= set(names)
  assert not [n for n in names if n.split("/")[0] in ("configs", "tests", "notebooks")]
  assert meta["Name"] == "mecjax" and meta["Version"] == mecjax.__version__
  assert set(meta.get_all("Provides-Extra")) == {"tfds", "torch", "notebooks", "test", "cuda",
                                                 "tpu"}
  requires = meta.get_all("Requires-Dist")
  assert "jax>=0.10.1" in requires and "flax>=0.12.8" in requires
  assert any(r.startswith("jax[cuda]>=0.10.1") and 'extra == "cuda"' in r for r in requires)
  assert not [r for r in requires if "==" in r.split(";")[0]]   # ranges, not pins
  assert "mecjax = mecjax.cli:main" in entry


def test_installed_package_runs_the_smoke_config_from_another_directory(
    wheel, tmp_path, cifar_path, compile_cache):
  target = tmp_path / "site"
  proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                         "--target", str(target), wheel], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = cli_env(1, compile_cache, {"PYTHONPATH": str(target)})
  where = subprocess.run([sys.executable, "-c", "import mecjax; print(mecjax.__file__)"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
  assert where.stdout.strip() == str(target / "mecjax" / "__init__.py"), where.stderr
  workdir = tmp_path / "run"
  config = REPO / "configs" / "mec_cifar10.py"
  run = subprocess.run([sys.executable, "-m", "mecjax.main", f"--config={config}:smoke",
                        f"--workdir={workdir}", f"--config.data.path={cifar_path}"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert (workdir / "metrics.jsonl").exists() and list((workdir / "checkpoints").iterdir())
  assert not os.listdir(elsewhere)   # nothing written relative to the current directory
  # The console command pip wrote, with the module command's flags.
  knn = subprocess.run([str(target / "bin" / "mecjax"), "evaluate", "knn",
                        f"--workdir={workdir}"], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=600)
  assert knn.returncode == 0, knn.stderr[-3000:]
  assert "knn" in (knn.stdout + knn.stderr).lower()
