"""E2MC continued pre-training against the "continued" ablation and E2MC's ablation criteria,
from one base, on the shared CIFAR-10.

  python benchmarks/bench_e2mc.py --data=../shared/data/cifar10-jpeg.tar.gz \
      --workdir=runs/bench_e2mc --base=vicreg --base-epochs=12 \
      [--criteria=e2mc,continued,vc,au,mmcr] [--seeds=0,1] [--variant=] [--knn-every=1]

1. The base: ``configs/<base>_cifar10.py:cpu`` for ``--base-epochs`` (seed 0), in
   ``WORKDIR/base_<base>``; ``--bases=DIR`` reads ``DIR/<base>`` instead (bench_methods.py's
   runs) and trains nothing.
2. From those weights, for each seed and criterion, ``configs/e2mc_<base>_cifar10.py:<variant>``
   with the criterion's variant (``e2mc``: none; ``continued``: the base loss alone; ``vc``,
   ``au``, ``mmcr``: that criterion in E2MC's place): the paper's protocol, 10 epochs at
   0.01 x the base learning rate, constant, batch 512, unless ``--variant=short`` (1 epoch).
   Same data order and augmentation for every criterion of a seed. kNN every
   ``--knn-every`` epochs (the curves of E2MC paper Fig. 3: ``python -m mecjax.evaluate
   curves`` over the runs, printed at the end).
3. For the base and every continuation: the offline linear probe (``configs/linear_cifar10.py``,
   MEC's protocol: frozen encoder, BN-Linear, 100 epochs on cached un-augmented features) and
   ``python -m mecjax.evaluate e2mc`` (E2MC's H and Cov of the embedding on 2048 test images,
   before and after, the same way for every run).

Each step is the README's command in a child process, and is skipped where its output is
there already, so the bench can be stopped and resumed. Printed: a row per criterion with the
mean over seeds and half the range of kNN top-1 (k=200, T=0.1, BN eval mode, full train bank,
test queries), linear top-1, H and Cov; the base's own figures; the wall minutes.
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
sys.path.insert(0, HERE)

from mecjax.metric_writers import read_metrics  # noqa: E402
import bench_methods  # noqa: E402
import timing  # noqa: E402

CRITERIA = {"e2mc": [], "continued": ["continued"], "vc": ["vc"], "au": ["au"],
            "mmcr": ["mmcr"]}


def last(rows, key):
  values = [r[key] for r in rows if key in r]
  return values[-1] if values else float("nan")


def command(args: list[str], done) -> float:
  """Runs ``python ARGS`` in the repository unless ``done()``; wall minutes (nan: skipped)."""
  if done():
    return float("nan")
  cmd = [sys.executable, *args]
  print("$", " ".join(["python", *args]), flush=True)
  t = time.time()
  subprocess.run(cmd, cwd=REPO, check=True)
  return (time.time() - t) / 60


def evaluate(workdir: str, args, *, pictures: bool = True) -> dict:
  """Offline linear probe and (for a continuation) E2MC's H and Cov of ``workdir``'s run."""
  linear = workdir + "_linear"
  probe = "configs/linear_cifar10.py" + (f":{args.linear_variant}" if args.linear_variant else "")
  command(["-m", "mecjax.main", f"--config={probe}", f"--workdir={linear}",
           f"--config.init.workdir={workdir}", f"--config.data.path={args.data}"],
          lambda: any("linear_top1" in r for r in bench_methods.metrics(linear)))
  rows = read_metrics(workdir)
  if pictures:
    command(["-m", "mecjax.evaluate", "e2mc", f"--workdir={workdir}", "--examples=2048"],
            lambda: any("eval_entropy" in r for r in rows))
    rows = read_metrics(workdir)
  return {"knn": 100 * last([r for r in rows if "knn_top1" in r and "knn_k" not in r],
                            "knn_top1"),
          "linear": 100 * last(bench_methods.metrics(linear), "linear_top1"),
          "H": last(rows, "eval_entropy"), "Cov": last(rows, "eval_cov"),
          "H0": last(rows, "eval_entropy_init"), "Cov0": last(rows, "eval_cov_init"),
          "steps": last([r for r in rows if "loss" in r], "step")}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--workdir", default="runs/bench_e2mc")
  p.add_argument("--base", default="vicreg")
  p.add_argument("--base-epochs", type=float, default=12)
  p.add_argument("--bases", default=None, help="read DIR/<base> instead of training a base")
  p.add_argument("--criteria", default=",".join(CRITERIA))
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--variant", default="")
  p.add_argument("--knn-every", type=float, default=1.0, help="epochs; 0: at the end only")
  p.add_argument("--linear-variant", default="", help="e.g. smoke: the probe's CI size")
  args = p.parse_args()
  args.data = os.path.abspath(args.data)
  args.workdir = os.path.abspath(args.workdir)
  print(timing.machine_line(), flush=True)

  # ---- the base
  if args.bases:
    base_dir = os.path.abspath(os.path.join(args.bases, args.base))
  else:
    base_dir = os.path.join(args.workdir, f"base_{args.base}")
    bench_methods.train(f"configs/{args.base}_cifar10.py:cpu", base_dir, args.data,
                        [f"--config.total_epochs={args.base_epochs:g}", "--config.seed=0"])
  base = evaluate(base_dir, args, pictures=False)
  print(f"base {args.base}: kNN {base['knn']:.2f}%, linear {base['linear']:.2f}% at step "
        f"{base['steps']}", flush=True)

  # ---- the continuations
  results, walls = {}, {}
  for seed in [int(s) for s in args.seeds.split(",")]:
    for name in args.criteria.split(","):
      variant = ",".join([v for v in [args.variant, *CRITERIA[name]] if v])
      workdir = os.path.join(args.workdir, f"{name}_seed{seed}")
      wall = command(["-m", "mecjax.main", f"--config=configs/e2mc_{args.base}_cifar10.py:{variant}",
                      f"--workdir={workdir}", f"--config.data.path={args.data}",
                      f"--config.init.workdir={base_dir}", f"--config.seed={seed}",
                      *([f"--config.knn.every_epochs={args.knn_every:g}"] if args.knn_every
                        else [])],
                     lambda: bench_methods.finished(workdir))
      walls.setdefault(name, []).append(wall)
      results.setdefault(name, []).append(evaluate(workdir, args))
      r = results[name][-1]
      print(f"{name} seed {seed}: kNN {r['knn']:.2f}%, linear {r['linear']:.2f}%, "
            f"H {r['H']:.4f} (start {r['H0']:.4f}), Cov {r['Cov']:.5f} (start {r['Cov0']:.5f})"
            f" | {r['steps']} steps, {wall:.1f} min", flush=True)

  # ---- the table
  seeds = args.seeds.replace(",", ", ")
  print(f"\n| from {args.base} (kNN {base['knn']:.2f}%, linear {base['linear']:.2f}%) | kNN top-1 % "
        f"| linear top-1 % | H | Cov | wall min | seeds |")
  print("|---|---|---|---|---|---|---|")
  for name, rs in results.items():
    cells = [bench_methods.spread([r[k] for r in rs]) for k in ("knn", "linear")]
    h = bench_methods.spread([r["H"] for r in rs], ".4f")
    cov = bench_methods.spread([r["Cov"] for r in rs], ".5f")
    print(f"| {name} | {cells[0]} | {cells[1]} | {h} | {cov} | "
          f"{bench_methods.spread(walls[name])} | {seeds} |")
  runs = [os.path.join(args.workdir, f"{n}_seed0") for n in results]
  print("\nkNN over the continued epochs (E2MC paper Fig. 3):\n  python -m mecjax.evaluate curves "
        f"--runs {' '.join(runs)} --labels {' '.join(results)} --metric=knn_top1 "
        f"--out={os.path.join(args.workdir, 'curves_knn.png')}")


if __name__ == "__main__":
  main()
