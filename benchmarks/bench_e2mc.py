"""E2MC continued pre-training vs the "continued" ablation on the shared CIFAR-10.

  python benchmarks/bench_e2mc.py --data=../shared/data/cifar10-jpeg.tar.gz \
      --bases=runs/bench_methods --workdir=runs/bench_e2mc [--methods=vicreg,swav,simsiam]
      [--seed=0] [--variant=short]

For each base method, its ``cpu``-variant run in ``BASES/<method>`` (bench_methods.py writes
them) is continued twice with the same seed and budget: ``configs/e2mc_<method>_cifar10.py:
<variant>`` (base loss + E2MC) and ``:<variant>,continued`` (base loss alone), each the
README's command in a child process. Printed per base: kNN top-1 (k=200, T=0.1, BN eval
mode, full train bank / test queries) of the base checkpoint (its own last evaluation) and
after each continuation, the E2MC terms (entropy H, covariance) at the end of each run, the
wall minutes; then a markdown table. An existing finished workdir is only read.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
sys.path.insert(0, REPO)

from mecjax.metric_writers import read_metrics  # noqa: E402


def last(rows, key):
  values = [r[key] for r in rows if key in r]
  return values[-1] if values else float("nan")


def run_one(method: str, ablation: bool, args) -> dict:
  name = f"{method}_{'continued' if ablation else 'e2mc'}"
  workdir = os.path.join(args.workdir, name)
  variant = args.variant + (",continued" if ablation else "")
  cmd = [sys.executable, "-m", "mecjax.main",
         f"--config=configs/e2mc_{method}_cifar10.py:{variant}", f"--workdir={workdir}",
         f"--config.data.path={args.data}",
         f"--config.init.workdir={os.path.join(args.bases, method)}",
         f"--config.seed={args.seed}"]
  out = {"cmd": " ".join(["python"] + cmd[1:]), "wall_min": float("nan")}
  rows = read_metrics(workdir) if os.path.exists(workdir) else []
  if not (rows and "knn_top1" in rows[-1]):
    print("$", out["cmd"], flush=True)
    t = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    out["wall_min"] = (time.time() - t) / 60
    rows = read_metrics(workdir)
  out.update(knn=100 * last(rows, "knn_top1"), probe=100 * last(rows, "probe_top1"),
             steps=last(rows, "step"))
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--bases", default="runs/bench_methods")
  p.add_argument("--workdir", default="runs/bench_e2mc")
  p.add_argument("--methods", default="vicreg,swav,simsiam")
  p.add_argument("--variant", default="short")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  table = []
  for method in args.methods.split(","):
    base_rows = read_metrics(os.path.join(args.bases, method))
    before = 100 * last(base_rows, "knn_top1")
    e2mc, cont = run_one(method, False, args), run_one(method, True, args)
    e2mc_rows = read_metrics(os.path.join(args.workdir, f"{method}_e2mc"))
    cont_rows = read_metrics(os.path.join(args.workdir, f"{method}_continued"))
    row = (method, before, e2mc["knn"], cont["knn"], e2mc["steps"],
           last(e2mc_rows, "reg_entropy"), last(e2mc_rows, "reg_cov"),
           e2mc["wall_min"], cont["wall_min"], args.seed)
    table.append(row)
    print(f"{method}: kNN before {before:.2f}, +E2MC {e2mc['knn']:.2f}, +continued "
          f"{cont['knn']:.2f} ({e2mc['steps']} steps; H {row[5]:.4f}, Cov {row[6]:.5f}; "
          f"seed {args.seed})", flush=True)
  print("\n| base (cpu checkpoint) | kNN before | + E2MC | + continued | steps | E2MC run: H / Cov "
        "at the end | wall min (E2MC / continued) | seed |")
  print("|---|---|---|---|---|---|---|---|")
  for m, b, e, c, s, h, cov, we, wc, seed in table:
    print(f"| {m} | {b:.2f} | {e:.2f} | {c:.2f} | {s} | {h:.4f} / {cov:.5f} | {we:.1f} / "
          f"{wc:.1f} | {seed} |")


if __name__ == "__main__":
  main()
