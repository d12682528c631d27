"""One 3x3 convolution's forward, input gradient and weight gradient under XLA:CPU's
library-fusion flags, one child process per flag (XLA_FLAGS is read once, at start-up).

  python benchmarks/bench_conv_flags.py [--width 16] [--batch 512] [--size 32] [--reps 5]

Prints, per flag, the minimum over 3 interleaved rounds of ``--reps`` calls of each compiled
function (milliseconds; ``timing.interleaved``) and whether XLA put the weight-gradient
convolution into a fusion (what the ``individual_convolution`` fusion types do when they
take it). The default row is what ``mecjax.main`` runs with (YNNPACK fusions off).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=",
    "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_fusion_type=individual_convolution",
    "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
)


def child(width: int, batch: int, size: int, reps: int) -> dict:
  import jax

  import timing

  x = jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, width))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, width, width)) * 0.1

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  fns = {
      "forward": lambda x, w: conv(x, w),
      "input_grad": lambda x, w: jax.vjp(lambda x: conv(x, w), x)[1](x)[0],
      "weight_grad": lambda x, w: jax.vjp(lambda w: conv(x, w), w)[1](x)[0],
  }
  compiled = {name: jax.jit(fn).lower(x, w).compile() for name, fn in fns.items()}
  times = timing.interleaved({name: (lambda c=c: c(x, w)) for name, c in compiled.items()},
                             rounds=3, reps=reps)
  out = {name: min(t) * 1e3 for name, t in times.items()}
  entry = compiled["weight_grad"].as_text().split("ENTRY", 1)[1]
  out["weight_grad_fused"] = "convolution(" not in entry
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--width", type=int, default=16, help="input and output channels")
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--size", type=int, default=32, help="height and width of the feature map")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.width, args.batch, args.size, args.reps)))
    return
  print(f"| XLA_FLAGS | forward ms | input gradient ms | weight gradient ms | weight gradient "
        f"in a library fusion |\n|---|---|---|---|---|")
  for flags in FLAGS:
    env = dict(os.environ, XLA_FLAGS=flags)
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                          f"--width={args.width}", f"--batch={args.batch}",
                          f"--size={args.size}", f"--reps={args.reps}"],
                         env=env, capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"| `{flags}` | {r['forward']:.1f} | {r['input_grad']:.1f} | "
          f"{r['weight_grad']:.1f} | {'yes' if r['weight_grad_fused'] else 'no'} |", flush=True)


if __name__ == "__main__":
  main()
