"""Training throughput of the multi-process path: `launch/local.sh 2` (two processes on
127.0.0.1, one CPU device each, gloo collectives) against one process with the same global
batch, and one process with two forced CPU devices (the same sharding, no second process).

  python benchmarks/bench_launch.py --data=../shared/data/cifar10-jpeg.tar.gz \
      [--config=configs/mec_cifar10.py:smoke] [--steps=30] [--batch=64] [--rounds=2] \
      [--out=runs/bench_launch]

Images/s are metrics.jsonl's ``examples_per_sec`` (global images over the wall time of each
logging interval, the compiling first step excluded), median over the intervals after the
first ``--skip`` steps; kNN, probe and intermediate checkpoints are off so that only train
steps are timed. The candidates take turns round by round (a loaded machine drifts), each
run in a fresh workdir with one shared compilation cache; the wall time of each whole
command (start-up, compilation, the final checkpoint) is reported beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from mecjax.metric_writers import read_metrics  # noqa: E402
import timing  # noqa: E402

# name -> (command prefix before the mecjax.main arguments, forced CPU devices per process)
CANDIDATES = {
    "1 process, 1 device": ([sys.executable, "-m", "mecjax.main"], 1),
    "1 process, 2 devices": ([sys.executable, "-m", "mecjax.main"], 2),
    "2 processes (local.sh), 1 device each": (["bash", "launch/local.sh", "2"], 1),
}


def run_once(prefix: list[str], devices: int, args, workdir: str, cache: str) -> dict:
  shutil.rmtree(workdir, ignore_errors=True)
  overrides = [f"--config.data.path={args.data}", f"--config.total_steps={args.steps}",
               f"--config.batch_size={args.batch}", "--config.knn.enabled=False",
               "--config.probe.enabled=False", f"--config.checkpoint.every_steps={args.steps}",
               f"--config.log_every_steps={args.log_every}"]
  cmd = [*prefix, f"--config={args.config}", f"--workdir={workdir}", *overrides]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache, PYTHON=sys.executable,
             PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  t = time.time()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  wall = time.time() - t
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  rates = [r["examples_per_sec"] for r in read_metrics(workdir)
           if "examples_per_sec" in r and r["step"] > args.skip]
  if not rates:
    raise SystemExit(f"{workdir}/metrics.jsonl has no examples_per_sec after step {args.skip}")
  return {"rate": statistics.median(rates), "wall": wall, "cmd": cmd}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", required=True)
  p.add_argument("--config", default="configs/mec_cifar10.py:smoke")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--batch", type=int, default=64, help="global batch")
  p.add_argument("--log-every", type=int, default=5)
  p.add_argument("--skip", type=int, default=5, help="intervals ending at or before are dropped")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--out", default="runs/bench_launch")
  args = p.parse_args()
  out = os.path.abspath(os.path.join(REPO, args.out))
  cache = os.path.join(out, "jax_cache")
  print(timing.machine_line(), f"; load average {os.getloadavg()[0]:.1f} at start", flush=True)

  results = {name: [] for name in CANDIDATES}
  for r in range(args.rounds):
    for i, (name, (prefix, devices)) in enumerate(CANDIDATES.items()):
      res = run_once(prefix, devices, args, os.path.join(out, f"run{i}"), cache)
      results[name].append(res)
      print(f"round {r}: {name}: {res['rate']:.1f} img/s, {res['wall']:.0f} s "
            f"(load {os.getloadavg()[0]:.1f})", flush=True)
  base = statistics.median(x["rate"] for x in results[next(iter(CANDIDATES))])
  print(f"\nglobal batch {args.batch}, {args.steps} steps, {args.config}\n")
  print("| run | img/s per round | median img/s | vs 1 process | wall s per run |")
  print("|---|---|---|---|---|")
  for name, runs in results.items():
    med = statistics.median(x["rate"] for x in runs)
    rates = ", ".join(f"{x['rate']:.1f}" for x in runs)
    walls = ", ".join(f"{x['wall']:.0f}" for x in runs)
    print(f"| {name} | {rates} | {med:.1f} | {med / base:.2f}x | {walls} |")


if __name__ == "__main__":
  main()
