"""Every method's `cpu` variant on the shared CIFAR-10 under one wall-clock budget.

  python benchmarks/bench_methods.py --data=../shared/data/cifar10-jpeg.tar.gz \
      --workdir=runs/bench_methods [--methods=mec,music,...] [--seed=0]

Each method trains for the number of epochs that fills the same budget of training time on
the reference machine (``EPOCHS``: the budget x the method's measured images/s / 50000,
pinned so that a re-run repeats the same steps and reproduces the figures; a wall-clock stop
would cut a different cosine schedule on every run). Each run is the README's command in a
child process (``--config=configs/<method>_cifar10.py:cpu --config.total_epochs=E``), timed
by the OS (wall clock and the child's own peak RSS, from wait4). Printed per method: kNN
top-1 (k=200, T=0.1, BN eval mode, full train bank / test queries) and the online probe's
top-1 at the end, images/s (median of the logged intervals, compilation and evaluation
excluded), training minutes, wall minutes, peak host memory, seed; then a markdown table.
An existing finished workdir is only read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from mecjax.metric_writers import read_metrics  # noqa: E402
import timing  # noqa: E402

TRAIN_IMAGES = 50_000
BUDGET_MIN = 10.25
# Images/s of each cpu variant on the reference machine (AMD EPYC, 2 vCPU; 0.25-epoch runs of
# each config, 2026-11-23) and the epochs that fill BUDGET_MIN of training at that speed.
IMAGES_PER_SEC = {'mec': 243, 'music': 275, 'simsiam': 289, 'byol': 247, 'barlow_twins': 298, 'vicreg': 292, 'swav': 266, 'simclr': 295}
# EPOCHS[m] = BUDGET_MIN x 60 x IMAGES_PER_SEC[m] / 50000, to 0.05 epoch (written out so the
# command lines stay as printed).
EPOCHS = {"mec": 3.0, "music": 3.4, "simsiam": 3.55, "byol": 3.05, "barlow_twins": 3.65,
          "vicreg": 3.6, "swav": 3.25, "simclr": 3.65}


def run_one(method: str, args) -> dict:
  workdir = os.path.join(args.workdir, method)
  cmd = [sys.executable, "-m", "mecjax.main", f"--config=configs/{method}_cifar10.py:cpu",
         f"--workdir={workdir}", f"--config.data.path={args.data}",
         f"--config.total_epochs={EPOCHS[method]}", f"--config.seed={args.seed}"]
  out = {"cmd": " ".join(["python"] + cmd[1:])}
  rows = read_metrics(workdir) if os.path.exists(workdir) else []
  if not (rows and "knn_top1" in rows[-1]):
    print("$", out["cmd"], flush=True)
    t = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    out["wall_min"] = (time.time() - t) / 60
    out["peak_gib"] = usage.ru_maxrss / 2**20
    if status:
      raise SystemExit(f"{method}: the training run failed (status {status})")
    rows = read_metrics(workdir)
  train_rows = [r for r in rows if "examples_per_sec" in r]
  rates = [r["examples_per_sec"] for r in train_rows]
  out["images_per_sec"] = statistics.median(rates) if rates else float("nan")
  last = rows[-1]
  out["train_min"] = last["step"] * 256 / out["images_per_sec"] / 60
  out.update(knn=100 * last["knn_top1"], probe=100 * last.get("probe_top1", float("nan")),
             step=last["step"], epochs=EPOCHS[method])
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--workdir", default="runs/bench_methods")
  p.add_argument("--methods", default=",".join(EPOCHS))
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  args.data = os.path.abspath(args.data)
  args.workdir = os.path.abspath(args.workdir)
  print(timing.machine_line())
  results = {}
  for m in args.methods.split(","):
    results[m] = run_one(m, args)
    r = results[m]
    print(f"{m}: kNN {r['knn']:.2f}% probe {r['probe']:.2f}% | {r['images_per_sec']:.0f} img/s | "
          f"{r['epochs']} epochs ({r['step']} steps, ~{r['train_min']:.1f} min training) | wall {r.get('wall_min', float('nan')):.1f}"
          f" min | peak {r.get('peak_gib', float('nan')):.2f} GiB", flush=True)
  print(f"\n| method | epochs (steps) | kNN top-1 | online probe top-1 | images/s | "
        f"training min | wall min | peak memory GiB | seed |")
  print("|---|---|---|---|---|---|---|---|---|")
  for m, r in results.items():
    print(f"| {m} | {r['epochs']} ({r['step']}) | {r['knn']:.2f} | {r['probe']:.2f} | "
          f"{r['images_per_sec']:.0f} | {r['train_min']:.1f} | "
          f"{r.get('wall_min', float('nan')):.1f} | "
          f"{r.get('peak_gib', float('nan')):.2f} | {args.seed} |")


if __name__ == "__main__":
  main()
