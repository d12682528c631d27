"""Shared fixtures: 8 forced CPU devices in-process, a CIFAR-10-shaped archive, the CLI.

The in-process tests see 8 CPU devices (sharded-vs-single checks need them); end-to-end
tests run ``python -m mecjax.main`` in subprocesses with the device count they ask for, and
share one persistent XLA compilation cache so a configuration compiles once per session.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

# Before JAX starts its backend: 8 CPU devices for the sharding tests, and LLVM at -O0 (the
# tests run tiny programs a few times: compiling them is most of the suite's time).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def write_image_tree(root: Path, per_class: dict[str, int], size=32, seed=0,
                     top: str | None = None, classes=CLASSES) -> Path:
  """``[top/]<split>/<class>/<nnnn>.jpg`` of random JPEGs (class-dependent mean colour)."""
  rng = np.random.default_rng(seed)
  base = root / top if top else root
  for split, n in per_class.items():
    for c, name in enumerate(classes):
      folder = base / split / name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        mean = 40 + 20 * c
        pixels = np.clip(rng.normal(mean, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
  return root


def tar_tree(root: Path, out: Path, compress: bool) -> Path:
  with tarfile.open(out, "w:gz" if compress else "w") as tf:
    for path in sorted(root.rglob("*")):
      tf.add(path, arcname=str(path.relative_to(root)), recursive=False)
  return out


@pytest.fixture(scope="session")
def cifar_path(tmp_path_factory) -> str:
  """The shared CIFAR-10 archive when present (MECJAX_TEST_CIFAR overrides), else a
  synthetic archive of the same layout (30 train / 16 test images per class)."""
  env = os.environ.get("MECJAX_TEST_CIFAR")
  if env:
    return env
  if SHARED_CIFAR.exists():
    return str(SHARED_CIFAR)
  root = tmp_path_factory.mktemp("cifar_tree")
  write_image_tree(root, {"train": 30, "test": 16}, top="cifar10")
  return str(tar_tree(root, tmp_path_factory.mktemp("cifar") / "cifar10.tar.gz", True))


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
  """One persistent XLA cache for every command-line run of the session, shared by the
  pytest-xdist workers (their base temp dirs have one parent): the same smoke program
  compiles once even when tests on two workers run it."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path = root / "jax_compilation_cache"
  path.mkdir(exist_ok=True)
  return str(path)


def cli_env(devices: int = 1, cache: str | None = None, extra: dict | None = None) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  # LLVM at -O0: the smoke runs are a few tiny steps, so compilation is most of their time
  # (about 20% less of it; numbers compared between two runs see the same flags).
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0")
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  if cache:
    env["JAX_COMPILATION_CACHE_DIR"] = cache
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  env.update(extra or {})
  return env


TORCH_MISSING = ("torch is not installed: the PyTorch checkpoint import/export tests skip "
                 "(pip install -r requirements-torch.txt)")


def require_torch():
  """torch, or skip: raised here so pytest's summary folds every such skip into one line."""
  return pytest.importorskip("torch", reason=TORCH_MISSING)


def pytest_report_header(config):
  import importlib.util
  if importlib.util.find_spec("torch") is None:
    return TORCH_MISSING


def run_main(config: str, workdir, *overrides: str, devices: int = 1, cache: str | None = None,
             env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
  """``python -m mecjax.main --config=... --workdir=... [--config.K=V ...]`` in the repo (for
  the relative config paths), importing the installed mecjax."""
  cmd = [sys.executable, "-m", "mecjax.main", f"--config={config}", f"--workdir={workdir}",
         *overrides]
  return subprocess.run(cmd, cwd=REPO, env=cli_env(devices, cache, env), capture_output=True,
                        text=True, timeout=timeout)


def encode_jpeg(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def sharded_updates(config, mesh, batch_views, *, global_batch: int, image_size: int,
                    steps: int, seed: int = 9) -> list[dict]:
  """Metrics of ``steps`` train updates (the loop's ``make_init`` / ``make_update``) with the
  state replicated and the batch split over ``mesh``: the 1-vs-8-device comparisons.
  ``batch_views(step, rng)`` gives the step's list of (global_batch, ...) view arrays."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from mecjax import evaluators, methods, train
  run = methods.RunInfo(global_batch=global_batch, steps_per_epoch=4, total_steps=12)
  method = methods.get_method(config, run)
  tx, lr, ema = train.make_tx(config, run, method.uses_target)
  probe_net = evaluators.probe.LinearProbe(10)
  probe_tx = evaluators.probe.make_optimizer(config.probe)
  init = train.make_init(method, tx, probe_net, probe_tx, (2, image_size, image_size, 3))
  update = train.make_update(method, tx, lr, ema, probe_net, probe_tx, True)
  repl, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.jit(init, static_argnums=0, out_shardings=repl)(0)
  step = jax.jit(update, out_shardings=(repl, repl))
  rng = np.random.default_rng(seed)
  out = []
  for i in range(steps):
    views = [jax.device_put(v, rows) for v in batch_views(i, rng)]
    labels = jax.device_put(rng.integers(0, 10, global_batch).astype(np.int32), rows)
    state, metrics = step(state, views, labels)
    out.append(jax.device_get(metrics))
  return out
