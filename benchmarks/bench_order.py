"""A whole MEC train step (mecjax.train.make_update: forward, backward, SGD, EMA teacher,
probe) at series order 4 against the same step at order 1.

  python benchmarks/bench_order.py [--width 0.25] [--batch 256] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_experimental_ynn_fusion_type=").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mecjax import configlib, evaluators, methods, train  # noqa: E402
import timing  # noqa: E402


def load_config(path, arg=None):
  return configlib.load(path, arg)


def build(config, batch, size=32):
  run = methods.RunInfo(batch, 195, 1000)
  method = methods.get_method(config, run)
  tx, lr, ema = train.make_tx(config, run, method.uses_target)
  probe_net = evaluators.probe.LinearProbe(10)
  probe_tx = evaluators.probe.make_optimizer(config.probe)
  init = train.make_init(method, tx, probe_net, probe_tx, (2, size, size, 3))
  update = jax.jit(train.make_update(method, tx, lr, ema, probe_net, probe_tx, True),
                   donate_argnums=0)
  return jax.jit(init, static_argnums=0)(0), update


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default=os.path.join(HERE, "..", "configs", "mec_cifar10.py"))
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--reps", type=int, default=3)
  args = p.parse_args()
  print(timing.machine_line())
  k1, k2 = jax.random.split(jax.random.key(1))
  views = [jax.random.normal(k1, (args.batch, 32, 32, 3)),
           jax.random.normal(k2, (args.batch, 32, 32, 3))]
  labels = jnp.arange(args.batch) % 10
  states, fns = {}, {}
  for order in (4, 1):
    config = load_config(args.config)
    config.model.width = args.width
    config.batch_size = args.batch
    config.mec.order = order
    states[order], update = build(config, args.batch)

    def step(order=order, update=update):
      states[order], metrics = update(states[order], views, labels)
      return metrics["loss"]
    fns[f"order {order}"] = step
  print(f"config {os.path.basename(args.config)}: width {args.width}, batch {args.batch}, "
        f"projector {config.projector.hidden}->{config.projector.out_dim}")
  times = timing.interleaved(fns, rounds=args.rounds, reps=args.reps)
  for name, t in times.items():
    print(f"{name}: {timing.median(t) * 1e3:.1f} ms/step, "
          f"{2 * args.batch / timing.median(t):.0f} views/s")
  print(f"order 4 / order 1 step time: {timing.ratio(times, 'order 4', 'order 1'):.3f}x "
        f"(median of {args.rounds} interleaved rounds)")


if __name__ == "__main__":
  main()
