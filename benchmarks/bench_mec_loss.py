"""MEC loss forward + backward: mecjax's mec_loss (order 4, trace trick, smaller form)
against mec_logdet (exact) and the official power-by-power m x m series.

  python benchmarks/bench_mec_loss.py [--shapes 256x2048,1024x2048,4096x2048] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mecjax.losses import mec_logdet, mec_loss  # noqa: E402
from mecjax.losses.mec import l2_normalize  # noqa: E402
import timing  # noqa: E402


def official_series(z1, z2, *, lamda_inv, order=4):
  """The official loss_func: the m x m matrix C, its powers one by one, then the trace."""
  c = l2_normalize(z1) @ l2_normalize(z2).T / lamda_inv
  power, total = c, jnp.zeros_like(c)
  for k in range(1, order + 1):
    if k > 1:
      power = power @ c
    total = total + power / k if (k + 1) % 2 == 0 else total - power / k
  return -lamda_inv / z1.shape[0] * jnp.trace(total)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", default="256x2048,1024x2048,4096x2048")
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args()
  print(timing.machine_line())
  print(f"{'m x d':>11} | {'mec_loss ms':>11} | {'mec_logdet ms':>13} | {'m x m series ms':>15} |"
        f" {'series/ours':>11} | {'logdet/ours':>11}")
  for shape in args.shapes.split(","):
    m, d = map(int, shape.split("x"))
    k1, k2 = jax.random.split(jax.random.key(0))
    z1 = jax.random.normal(k1, (m, d))
    z2 = z1 + 0.5 * jax.random.normal(k2, (m, d))
    lamda_inv = m * 64.0 / d
    fns = {}
    for name, loss in (("ours", mec_loss), ("logdet", mec_logdet), ("series", official_series)):
      f = jax.jit(jax.value_and_grad(lambda a, b, loss=loss: loss(a, b, lamda_inv=lamda_inv),
                                     argnums=(0, 1)))
      fns[name] = (lambda f=f: f(z1, z2))
    reps = 1 if m >= 4096 else 3
    times = timing.interleaved(fns, rounds=args.rounds, reps=reps)
    med = {k: timing.median(v) * 1e3 for k, v in times.items()}
    print(f"{m:>5} x {d:<4} | {med['ours']:>11.1f} | {med['logdet']:>13.1f} | "
          f"{med['series']:>15.1f} | {timing.ratio(times, 'series', 'ours'):>10.1f}x | "
          f"{timing.ratio(times, 'logdet', 'ours'):>10.1f}x", flush=True)


if __name__ == "__main__":
  main()
