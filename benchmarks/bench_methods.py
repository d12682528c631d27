"""Every method's `cpu` variant on the shared CIFAR-10 under one budget, seeds side by side.

  python benchmarks/bench_methods.py --data=../shared/data/cifar10-jpeg.tar.gz \
      --workdir=runs/bench_methods [--methods=mec,music,...] [--seeds=0,1]

Each run is the README's command for ``configs/<method>_cifar10.py:cpu`` with
``--config.seed=S``, in a child process, timed by the OS (wall clock and the child's own peak
RSS, from wait4). The `cpu` variants share one budget: the same number of epochs (each
variant's ``total_epochs``: 6, 1170 steps of batch 256, what the MEC `cpu` variant trains in
18 minutes on a 2-core Zen 5 VM; an estimated 16-20 for every method there), each at the
learning rate the short-run sweep chose (bench_sweep.py). Printed per method and seed: kNN
top-1 (k=200, T=0.1, BN eval mode, full train bank / test queries) and the online probe's
top-1 at the end, images/s (median of the logged intervals, compilation and evaluation
excluded), training minutes, wall minutes, peak host memory, the embedding's effective rank
at the end; then a markdown table with the mean over seeds and half their range. A finished
workdir (``WORKDIR/<method>`` for seed 0, ``WORKDIR/<method>_seed<S>`` for the others) is
only read.
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
METHODS = ("mec", "music", "simsiam", "byol", "barlow_twins", "vicreg", "swav", "simclr")


def metrics(workdir: str) -> list[dict]:
  """The rows of ``workdir``'s metrics.jsonl; none where there is none yet."""
  return read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []


def finished(workdir: str) -> bool:
  """A finished run: its last training step has a kNN row (rows that evaluation commands
  append afterwards, ``evaluate e2mc`` or ``evaluate knn``, do not change that)."""
  rows = metrics(workdir)
  steps = [r["step"] for r in rows if "loss" in r]
  return bool(steps) and any("knn_top1" in r and r["step"] == steps[-1] for r in rows)


def train(config: str, workdir: str, data: str, overrides=(), *, may_fail: bool = False
          ) -> dict:
  """Runs ``python -m mecjax.main --config=CONFIG`` in a child process unless ``workdir``
  already holds a finished run (``finished``), and reads the figures back: kNN and
  online-probe top-1 (%), images/s (median of the logged intervals), the last step and the
  embedding's effective rank then; wall minutes and peak RSS (GiB) when it ran here. A run
  that fails stops the bench, unless ``may_fail`` (a learning rate that diverges is a result
  of a sweep): then its figures are nan and ``failed`` holds the exit status."""
  cmd = [sys.executable, "-m", "mecjax.main", f"--config={config}", f"--workdir={workdir}",
         f"--config.data.path={data}", *overrides]
  out = {"cmd": " ".join(["python"] + cmd[1:])}
  if not finished(workdir):
    print("$", out["cmd"], flush=True)
    t = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    out["wall_min"] = (time.time() - t) / 60
    out["peak_gib"] = usage.ru_maxrss / 2**20
    if status and not may_fail:
      raise SystemExit(f"{config}: the training run in {workdir} failed (status {status})")
    if status:
      nan = float("nan")
      return {**out, "failed": status, "images_per_sec": nan, "knn": nan, "probe": nan,
              "step": 0, "rank": nan}
  rows = metrics(workdir)
  train_rows = [r for r in rows if "examples_per_sec" in r]
  rates = [r["examples_per_sec"] for r in train_rows]
  ranks = [r["effective_rank"] for r in rows if "effective_rank" in r]
  last = [r for r in rows if "knn_top1" in r and "knn_k" not in r][-1]   # the run's own
  out.update(images_per_sec=statistics.median(rates) if rates else float("nan"),
             knn=100 * last["knn_top1"], probe=100 * last.get("probe_top1", float("nan")),
             step=last["step"], rank=ranks[-1] if ranks else float("nan"))
  return out


def run_one(method: str, seed: int, args) -> dict:
  name = method if seed == 0 else f"{method}_seed{seed}"
  out = train(f"configs/{method}_cifar10.py:cpu", os.path.join(args.workdir, name),
              args.data, [f"--config.seed={seed}"])
  out["train_min"] = out["step"] * 256 / out["images_per_sec"] / 60
  out["epochs"] = out["step"] * 256 / TRAIN_IMAGES
  return out


def spread(xs, fmt=".2f") -> str:
  """Mean (half the range) of ``xs``; the value alone for one."""
  xs = [x for x in xs if x == x]
  if len(xs) < 2:
    return f"{xs[0]:{fmt}}" if xs else "n/a"
  return f"{statistics.mean(xs):{fmt}} ({(max(xs) - min(xs)) / 2:{fmt}})"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--workdir", default="runs/bench_methods")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--seeds", default="0", help="comma-separated; e.g. 0,1")
  args = p.parse_args()
  args.data = os.path.abspath(args.data)
  args.workdir = os.path.abspath(args.workdir)
  print(timing.machine_line())
  results = {}
  for m in args.methods.split(","):
    for seed in [int(x) for x in args.seeds.split(",")]:
      r = results.setdefault(m, {})[seed] = run_one(m, seed, args)
      print(f"{m} seed {seed}: kNN {r['knn']:.2f}% probe {r['probe']:.2f}% rank {r['rank']:.1f} | "
            f"{r['images_per_sec']:.0f} img/s | {r['epochs']:g} epochs ({r['step']} steps, "
            f"~{r['train_min']:.1f} min training) | wall {r.get('wall_min', float('nan')):.1f} "
            f"min | peak {r.get('peak_gib', float('nan')):.2f} GiB", flush=True)
  print("\n| method | epochs (steps) | kNN top-1 % | online probe top-1 % | images/s | "
        "training min | wall min | peak memory GiB | effective rank at the end | seeds |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for m, by_seed in results.items():
    rs = list(by_seed.values())
    col = lambda key, fmt=".2f": spread([r.get(key, float("nan")) for r in rs], fmt)
    print(f"| {m} | {rs[0]['epochs']:g} ({rs[0]['step']}) | {col('knn')} | {col('probe')} | "
          f"{col('images_per_sec', '.0f')} | {col('train_min', '.1f')} | "
          f"{col('wall_min', '.1f')} | {col('peak_gib')} | {col('rank', '.1f')} | "
          f"{', '.join(map(str, by_seed))} |")


if __name__ == "__main__":
  main()
