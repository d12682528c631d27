"""The short-run learning-rate sweep that picks each method's `cpu` learning rate.

  python benchmarks/bench_sweep.py --data=../shared/data/cifar10-jpeg.tar.gz \
      --workdir=runs/sweep [--methods=vicreg,mec,...] [--lrs=0.1,0.3,1.0] [--epochs=1]

Every method gets the same sweep: its `cpu` variant (``configs/<method>_cifar10.py:cpu``,
the method's own optimiser, heads and augmentation) for ``--epochs`` (the whole warm-up and
cosine schedule over that short run), seed 0, at each base learning rate of ``--lrs``. When
the best kNN top-1 of a method falls on an end of the grid, the grid is extended one step
further that way (x or / the grid's ratio), at most twice, so that a chosen rate has a worse
neighbour on both sides unless two extensions kept improving. The chosen rate is the best kNN (k=200, T=0.1, BN eval
mode, full train bank, test queries).

Each run is the README's command in a child process, with ``--config.total_epochs=E
--config.optim.base_lr=LR``; a finished workdir (``<workdir>/<method>_lr<LR>``) is only
read, so a sweep can be stopped and resumed. Images/s are the median logged interval: they
compare the methods' speeds only where the runs had the machine to themselves.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_methods  # noqa: E402
import timing  # noqa: E402


def _score(r: dict) -> float:
  """kNN top-1, a failed (diverged) run lowest."""
  return r["knn"] if r["knn"] == r["knn"] else float("-inf")


def sweep(method: str, lrs: list[float], args) -> dict[float, dict]:
  results = {}

  def run(lr):
    if lr not in results:
      results[lr] = bench_methods.train(
          f"configs/{method}_cifar10.py:cpu", os.path.join(args.workdir, f"{method}_lr{lr:g}"),
          args.data, [f"--config.total_epochs={args.epochs}", f"--config.optim.base_lr={lr:g}",
                      "--config.seed=0"], may_fail=True)
      r = results[lr]
      failed = f" (the run failed, exit status {r['failed']})" if r.get("failed") else ""
      print(f"{method} lr {lr:g}: kNN {r['knn']:.2f}% probe {r['probe']:.2f}% "
            f"rank {r['rank']:.1f} | {r['images_per_sec']:.0f} img/s{failed}", flush=True)

  for lr in lrs:
    run(lr)
  ratio = lrs[1] / lrs[0] if len(lrs) > 1 else 3.0
  # Extend past an end of the grid while the best sits on it (two extensions at most).
  for _ in range(2):
    grid = sorted(results)
    best = max(grid, key=lambda lr: _score(results[lr]))
    if best == grid[-1]:
      run(float(f"{best * ratio:.3g}"))
    elif best == grid[0]:
      run(float(f"{best / ratio:.3g}"))
    else:
      break
  return results


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--workdir", default="runs/sweep")
  p.add_argument("--methods", default=",".join(bench_methods.METHODS))
  p.add_argument("--lrs", default="0.1,0.3,1.0")
  p.add_argument("--epochs", type=float, default=1.0)
  args = p.parse_args()
  args.data = os.path.abspath(args.data)
  args.workdir = os.path.abspath(args.workdir)
  lrs = [float(x) for x in args.lrs.split(",")]
  print(timing.machine_line())
  table = {m: sweep(m, lrs, args) for m in args.methods.split(",")}
  print(f"\n| method | base lr: kNN top-1 % / online probe % (effective rank) | chosen | "
        "images/s at the chosen rate |")
  print("|---|---|---|---|")
  for m, res in table.items():
    best = max(res, key=lambda lr: _score(res[lr]))
    cells = "; ".join(f"{lr:g}: {r['knn']:.2f} / {r['probe']:.2f} ({r['rank']:.0f})"
                      for lr, r in sorted(res.items()))
    print(f"| {m} | {cells} | {best:g} | {res[best]['images_per_sec']:.0f} |")


if __name__ == "__main__":
  main()
