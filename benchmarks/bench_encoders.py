r"""Train-step throughput of the ImageNet encoders at 224 px: ViT-S/16 against ResNet-50.

  python benchmarks/bench_encoders.py                         # batch 8, fp32 and bf16
  python benchmarks/bench_encoders.py --batch 16 --rounds 5 --encoders vit_small

Each encoder runs its own MEC ImageNet recipe's train step, as ``mecjax.train.run`` builds it
(``benchmarks/bench_step.py: JaxStep``: ``make_update`` under ``jit`` with the state donated;
heads, EMA teacher, order-4 loss, online probe and collapse monitors included; augmentation
excluded): ``vit_small`` with configs/mec_imagenet_vit.py (4096-wide MoCo v3 heads, AdamW,
frozen patch projection), ``resnet50`` with configs/mec_imagenet.py (2048-wide heads, SGD).
Two float32 views of ``--batch`` images each per step; views/s counts both views (2B per
step). The variants (encoder x dtype) are built and compiled first, then timed in
interleaved rounds in this one process (the machine is noisy); the figure is the median over
rounds. XLA_FLAGS as bench_step.py sets them. JaxStep builds the optimiser without the
ViT's frozen-parameter mask, so AdamW also steps the (gradient-free) 0.3M-parameter patch
projection here: a negligible share of the step.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = {"vit_small": "mec_imagenet_vit.py", "vit_base": "mec_imagenet_vit.py:vit_b",
           "resnet50": "mec_imagenet.py"}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--encoders", default="vit_small,resnet50",
                 help=f"comma-separated, of {sorted(CONFIGS)}")
  p.add_argument("--dtypes", default="float32,bfloat16",
                 help="comma-separated config.model.dtype values")
  p.add_argument("--batch", type=int, default=8, help="images per view (B); 2B views/step")
  p.add_argument("--size", type=int, default=224, help="side of the views")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps-per-round", type=int, default=2)
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  p.add_argument("--pause", type=float, default=0.3)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  sys.path[:0] = [ROOT, HERE]
  import bench_step   # its XLA flags must be set before jax is imported
  bench_step.set_xla_flags(argparse.Namespace(xla_flags=None, no_default_xla_flags=False))
  import jax
  import numpy as np
  from mecjax import configlib

  encoders = [e for e in args.encoders.split(",") if e]
  dtypes = [d for d in args.dtypes.split(",") if d]
  for e in encoders:
    if e not in CONFIGS:
      raise SystemExit(f"--encoders: {e!r} is not one of {sorted(CONFIGS)}")
  print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}  host: "
        f"{platform.node()}  cpu: {bench_step.cpu_model()}  os.cpu_count(): {os.cpu_count()}")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}; XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}")
  print(f"batch {args.batch} per view ({2 * args.batch} views/step) at {args.size} px, "
        f"{args.rounds} rounds of {args.steps_per_round} steps per variant", flush=True)

  rng = np.random.default_rng(0)
  views = [rng.standard_normal((args.batch, args.size, args.size, 3), dtype=np.float32)
           for _ in range(2)]
  labels = rng.integers(0, 1000, size=(args.batch,), dtype=np.int32)
  runners = {}
  for enc in encoders:
    for dt in dtypes:
      config = configlib.load(os.path.join(ROOT, "configs", CONFIGS[enc]))
      config.model.dtype = dt
      config.batch_size = args.batch
      config.data.image_size = args.size
      t = time.perf_counter()
      runner = bench_step.JaxStep(config, args.batch, views, labels, num_classes=1000)
      runner.run(1)
      built = time.perf_counter() - t
      runner.run(args.warmup)
      n = sum(x.size for x in jax.tree.leaves(runner.state.params["encoder"]))
      print(f"  {enc} {dt}: encoder {n / 1e6:.2f}M parameters; built+compiled+1 step "
            f"{built:.1f}s; loss {float(runner.metrics['loss']):.5f}", flush=True)
      runners[f"{enc} {dt}"] = runner

  rates = {name: [] for name in runners}
  views_per_step = 2 * args.batch
  for rnd in range(args.rounds):
    for name, runner in runners.items():
      seconds = bench_step.timed(runner.run, args.steps_per_round, args.pause)
      rates[name].append(args.steps_per_round * views_per_step / seconds)
    print(f"  round {rnd}: " + ", ".join(f"{n} {r[-1]:.2f}" for n, r in rates.items()),
          flush=True)
  print("\nmedian views/s over rounds:")
  for name, r in rates.items():
    print(f"  {name:22s} {statistics.median(r):8.2f}  (rounds: "
          + " ".join(f"{x:.2f}" for x in r) + ")")


if __name__ == "__main__":
  main()
