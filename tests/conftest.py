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


# The images per class of each split that the CLI runs of the suite can read: the largest
# smoke sizes are 512 train / 256 eval images, class-balanced (config.data.max_*_examples).
SUBSET_PER_CLASS = {"train": 64, "test": 32}


def real_subset(archive: Path, out: Path) -> Path:
  """A .tar.gz of the first ``SUBSET_PER_CLASS`` images of each class and split of a
  CIFAR-10-layout archive, in the order the reader sorts them (class, then path).

  A run that reads at most that many images per class picks the same images with the same
  labels from it as from the whole archive (``sources.balanced_subset`` takes each class's
  first images round-robin), but indexing it costs a few milliseconds instead of seconds
  (a .tar.gz is decompressed whole at every process start: 60,000 members for CIFAR-10).
  """
  picked: dict[tuple[str, str], list[tarfile.TarInfo]] = {}
  blobs = {}
  with tarfile.open(archive, "r:*") as tf:
    for m in tf:
      parts = m.name.strip("/").split("/")
      if not m.isfile() or len(parts) != 4 or parts[1] not in SUBSET_PER_CLASS:
        continue
      picked.setdefault((parts[1], parts[2]), []).append(m)
      blobs[m.name] = tf.extractfile(m).read()
  with tarfile.open(out, "w:gz") as tf:
    for (split, _), members in sorted(picked.items()):
      for m in sorted(members, key=lambda m: m.name)[:SUBSET_PER_CLASS[split]]:
        tf.addfile(m, io.BytesIO(blobs[m.name]))
  return out


@pytest.fixture(scope="session")
def cifar_path(tmp_path_factory) -> str:
  """Real CIFAR-10 images when the shared archive is present: its subset that the suite's
  runs read (``real_subset``; MECJAX_TEST_CIFAR names an archive to use as it is), else a
  synthetic archive of the same layout (30 train / 16 test images per class)."""
  env = os.environ.get("MECJAX_TEST_CIFAR")
  if env:
    return env
  if SHARED_CIFAR.exists():
    return str(real_subset(SHARED_CIFAR, tmp_path_factory.mktemp("cifar") / "cifar10.tar.gz"))
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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Each file's fast tests share one pytest-xdist worker (an ``xdist_group`` named after the
  file, unless the test names its own group); slow tests stay spread one by one.

  A file's fast tests jit the same functions at the same shapes and share module fixtures
  (a ResNet-50 initialised once, say): on one worker each program compiles once, on two it
  compiles twice. Measured on the 2-vCPU AMD VM (2026-12-03): the fast tier's summed test
  time 443 s -> 267 s, its wall time 3m44s -> 2m32s. Slow tests are long and few per file,
  so spreading them balances the workers better than sharing would save. Runs before
  xdist's own hook, which turns the marker into the scheduling scope.
  """
  for item in items:
    if item.get_closest_marker("slow") or item.get_closest_marker("xdist_group"):
      continue
    item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def pytest_configure(config):
  """Refuse the one pairing known to make the grouping above silently do nothing: pytest-xdist
  3.8 marks a group by rewriting the node id, which pytest 9.2 no longer reads (pytest-xdist
  issue 1386), so every test runs as if ungrouped (module fixtures and compilations twice,
  the fast tier a third slower). requirements-test.txt pins a pair that works."""
  if not hasattr(config, "workerinput") and config.getoption("dist", "no") == "loadgroup":
    from importlib.metadata import version
    major_minor = lambda name: tuple(int(p) for p in version(name).split(".")[:2])
    if major_minor("pytest") >= (9, 2) and major_minor("pytest-xdist") <= (3, 8):
      raise pytest.UsageError(
          f"pytest {version('pytest')} with pytest-xdist {version('pytest-xdist')}: "
          "--dist loadgroup (pytest.ini) would not group the xdist_group tests; install "
          "the pins of requirements-test.txt")


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
