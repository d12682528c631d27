"""The `cpu` variant of mec_cifar10 on the shared CIFAR-10: kNN top-1 of the trained encoder
against the same encoder at random init and against standardised pixels, with the training
run's wall-clock time and peak host memory.

  python benchmarks/bench_cpu_variant.py --data=../shared/data/cifar10-jpeg.tar.gz \
      --workdir=runs/bench_cpu [--config=configs/mec_cifar10.py:cpu] [--skip-train]

The training run is the README's command, in a child process timed by the OS (wall clock
and ru_maxrss of the child); an existing finished workdir is only read. Baselines use the
same kNN code (weighted, k=200, T=0.1) on the full train (bank) and test (queries) splits.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402,F401

from mecjax import data as data_lib  # noqa: E402
from mecjax import configlib, evaluators, methods, parallel, train  # noqa: E402
from mecjax.data import sources  # noqa: E402
from mecjax.metric_writers import read_metrics  # noqa: E402
import timing  # noqa: E402


def load_config(spec: str):
  return configlib.load(os.path.join(REPO, spec))


def train_run(args) -> tuple[float, float]:
  """Run the README command in a child; (wall seconds, peak RSS GiB of the child)."""
  cmd = [sys.executable, "-m", "mecjax.main", f"--config={args.config}",
         f"--workdir={args.workdir}", f"--config.data.path={args.data}"]
  print("$", " ".join(cmd), flush=True)
  t = time.time()
  subprocess.run(cmd, cwd=REPO, check=True)
  wall = time.time() - t
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
  return wall, peak


def baselines(config, data_path) -> dict:
  config.data.path = data_path
  mesh = parallel.make_mesh()
  size = config.data.image_size
  bank = data_lib.load_split(config.data, "train", None, True, size)
  queries = data_lib.load_split(config.data, "test", None, True, size)
  recipe = data_lib.get_recipe(config.aug, size, config.seed)
  run = methods.RunInfo(config.batch_size, len(bank) // config.batch_size, 1)
  method = methods.get_method(config, run)
  tx, _, _ = train.make_tx(config, run, method.uses_target)
  probe_net = evaluators.probe.LinearProbe(10)
  init = train.make_init(method, tx, probe_net, evaluators.probe.make_optimizer(config.probe),
                         (2, size, size, 3))
  state = jax.jit(init, static_argnums=0)(config.seed)
  out = {}
  for mode in ("eval", "batch"):
    ev = train.Evaluator(config, method, recipe, mesh, bank, queries, 10, None, bn_mode=mode)
    t = time.time()
    out[f"random init, BN {mode} mode"] = (ev(state)["knn_top1"], time.time() - t)
  # Standardised pixels: (x / 255 - mean) / std per channel, flattened.
  t = time.time()

  def pixels(src):
    x = (src.images.astype(np.float32) / 255 - np.asarray(config.aug.mean)) / np.asarray(
        config.aug.std)
    return (jnp.asarray(x.reshape(len(src), -1)), jnp.asarray(src.labels),
            jnp.ones(len(src), bool))

  pix = float(evaluators.knn_top1(*pixels(bank), *pixels(queries), num_classes=10,
                                  k=config.knn.k, temperature=config.knn.temperature))
  out["standardised pixels"] = (pix, time.time() - t)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/mec_cifar10.py:cpu")
  p.add_argument("--data", required=True)
  p.add_argument("--workdir", default="runs/bench_cpu")
  p.add_argument("--skip-train", action="store_true", help="only read --workdir")
  args = p.parse_args()
  args.data = os.path.abspath(args.data)
  args.workdir = os.path.abspath(args.workdir)
  print(timing.machine_line())
  wall = peak = None
  if not args.skip_train:
    wall, peak = train_run(args)
  rows = read_metrics(args.workdir)
  last = rows[-1]
  base = baselines(load_config(args.config), args.data)
  print(f"\nconfig {args.config}, seed {load_config(args.config).seed}")
  if wall is not None:
    print(f"training run: {wall / 60:.1f} min wall clock, peak host memory {peak:.2f} GiB")
  print(f"trained encoder (step {last['step']}, BN eval mode): kNN top-1 "
        f"{100 * last['knn_top1']:.2f}%, online probe {100 * last.get('probe_top1', 0):.2f}%")
  for name, (acc, secs) in base.items():
    print(f"{name}: kNN top-1 {100 * acc:.2f}% ({secs:.0f} s)")


if __name__ == "__main__":
  main()
