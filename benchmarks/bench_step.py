r"""Time mecjax's real MEC train step against the official PyTorch MEC step, in one process.

  python benchmarks/bench_step.py                       # widths 64 and 16, batch 256, fp32
  python benchmarks/bench_step.py --widths 16 --rounds 7 --jax-dtypes float32,bfloat16
  python benchmarks/bench_step.py --jax-only --widths 64

JAX side: exactly what ``mecjax.train.run`` builds for configs/mec_cifar10.py (its heads,
optimiser, EMA teacher, online probe, collapse monitors), ``make_update`` under
``jax.jit(donate_argnums=0)``, fed two pre-made float32 views; augmentation excluded.
PyTorch side: benchmarks/torch_mec.py, the official MEC step on the same config values,
channels_last, ``torch.set_num_threads(os.cpu_count())``.

The machine is noisy, so the two are interleaved round by round in this one process: each
round times K JAX steps (per JAX dtype) then K PyTorch steps; warm-up and compilation are
excluded. img/s counts both views (a batch of B images is 2B views). The headline figure is
the median over rounds of the per-round JAX/PyTorch ratio.

XLA_FLAGS: as ``python -m mecjax.main`` does, ``--xla_cpu_experimental_ynn_fusion_type=`` is
appended unless XLA_FLAGS already names it or MECJAX_DEFAULT_XLA_FLAGS=0 (or
``--no-default-xla-flags``); ``--xla-flags`` replaces XLA_FLAGS outright.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--widths", default="64,16",
                 help="comma-separated base widths (64 = ResNet-18, 16 = width 0.25)")
  p.add_argument("--batch", type=int, default=256, help="images per view (B); 2B views/step")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps-per-round", type=int, default=0,
                 help="K steps per framework per round; 0: 2 at width >= 48, else 6")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per side after compile")
  p.add_argument("--jax-dtypes", default="float32",
                 help="comma-separated config.model.dtype values timed on the JAX side")
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "mec_cifar10.py"))
  p.add_argument("--xla-flags", default=None, help="replace XLA_FLAGS with this string")
  p.add_argument("--no-default-xla-flags", action="store_true",
                 help="do not append --xla_cpu_experimental_ynn_fusion_type=")
  p.add_argument("--pause", type=float, default=0.3,
                 help="seconds of idle before each timed block (lets spinning threads sleep)")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--jax-only", action="store_true")
  g.add_argument("--torch-only", action="store_true")
  return p.parse_args(argv)


def set_xla_flags(args):
  """Must run before jax is imported."""
  if args.xla_flags is not None:
    os.environ["XLA_FLAGS"] = args.xla_flags
  elif (not args.no_default_xla_flags
        and os.environ.get("MECJAX_DEFAULT_XLA_FLAGS", "1") == "1"
        and "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", "")):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_experimental_ynn_fusion_type=").strip()


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "?"


def load_config(path):
  from mecjax import configlib
  return configlib.load(path)


# ----------------------------------------------------------------------------- JAX side


class JaxStep:
  """The real mecjax train step (``make_update``), jitted with the state donated."""

  def __init__(self, config, batch, views_np, labels_np, num_classes=10):
    import jax
    import jax.numpy as jnp
    from mecjax import evaluators, methods, train

    run_info = methods.RunInfo(batch, 195, 1000)
    method = methods.get_method(config, run_info)
    tx, lr, ema_momentum = train.make_tx(config, run_info, method.uses_target)
    probe_tx = evaluators.probe.make_optimizer(config.probe)
    probe_net = evaluators.probe.LinearProbe(num_classes)
    view_shape = (2, config.data.image_size, config.data.image_size, 3)
    init_state = train.make_init(method, tx, probe_net, probe_tx, view_shape)
    self.state = jax.jit(init_state, static_argnums=0)(config.seed)
    update = train.make_update(method, tx, lr, ema_momentum, probe_net, probe_tx,
                               probe_on=True)
    self.update = jax.jit(update, donate_argnums=0)
    self.views = [jnp.asarray(v) for v in views_np]
    self.labels = jnp.asarray(labels_np)
    self._jax = jax
    self.metrics = None

  def run(self, k: int) -> None:
    for _ in range(k):
      self.state, self.metrics = self.update(self.state, self.views, self.labels)
    self._jax.block_until_ready((self.state, self.metrics))


# ------------------------------------------------------------------------- PyTorch side


class TorchStep:
  def __init__(self, config, batch, views_np, labels_np):
    import torch
    import torch_mec
    self.step_obj = torch_mec.MECStep(
        width=config.model.width, batch=batch, proj_hidden=config.projector.hidden[0],
        dim=config.projector.out_dim, pred_hidden=config.predictor.hidden[0],
        eps_sq=config.mec.eps_sq, lr=config.optim.base_lr,
        weight_decay=config.optim.weight_decay, momentum=config.optim.momentum,
        ema_momentum=config.ema.momentum, probe_lr=config.probe.lr, channels_last=True,
        seed=config.seed)
    self.x = [self.step_obj.to_input(v) for v in views_np]
    self.labels = torch.as_tensor(labels_np).long()

  def run(self, k: int) -> None:
    for _ in range(k):
      out = self.step_obj.step(self.x[0], self.x[1], self.labels)
    out[0].item()


# ---------------------------------------------------------------------------- the loop


def timed(fn, k, pause):
  time.sleep(pause)
  t = time.perf_counter()
  fn(k)
  return time.perf_counter() - t


def bench_width(args, width, base_config_path, dtypes, do_jax, do_torch):
  import numpy as np
  batch = args.batch
  views_per_step = 2 * batch
  k = args.steps_per_round or (2 if width >= 48 else 6)
  rng = np.random.default_rng(0)
  views = [rng.standard_normal((batch, 32, 32, 3), dtype=np.float32) for _ in range(2)]
  labels = rng.integers(0, 10, size=(batch,), dtype=np.int32)

  runners = {}
  if do_jax:
    for dt in dtypes:
      config = load_config(base_config_path)
      config.model.width = width / 64
      config.model.dtype = dt
      config.batch_size = batch
      t = time.perf_counter()
      r = JaxStep(config, batch, views, labels)
      r.run(1)
      compile_s = time.perf_counter() - t
      r.run(args.warmup)
      runners[f"jax_{dt}"] = r
      print(f"  [width {width}] jax {dt}: built+compiled+1 step {compile_s:.1f}s, "
            f"loss {float(r.metrics['loss']):.5f}", flush=True)
  if do_torch:
    config = load_config(base_config_path)
    config.model.width = width / 64
    config.batch_size = batch
    r = TorchStep(config, batch, views, labels)
    t = time.perf_counter()
    r.run(1 + args.warmup)
    print(f"  [width {width}] torch: warm-up {1 + args.warmup} steps "
          f"{time.perf_counter() - t:.1f}s", flush=True)
    runners["torch"] = r

  names = list(runners)
  rates = {n: [] for n in names}
  print(f"  [width {width}] batch {batch} ({views_per_step} views/step), K={k} steps per "
        f"framework per round, {args.rounds} rounds; img/s:")
  print("  round " + " ".join(f"{n:>14}" for n in names)
        + ("".join(f" {'ratio_' + n[4:]:>14}" for n in names if n != "torch")
           if "torch" in runners and len(names) > 1 else ""), flush=True)
  for rnd in range(args.rounds):
    for n in names:
      rates[n].append(k * views_per_step / timed(runners[n].run, k, args.pause))
    line = f"  {rnd:5d} " + " ".join(f"{rates[n][-1]:14.1f}" for n in names)
    if "torch" in runners:
      line += "".join(f" {rates[n][-1] / rates['torch'][-1]:14.3f}" for n in names
                      if n != "torch")
    print(line, flush=True)

  summary = {n: statistics.median(v) for n, v in rates.items()}
  ratios = {}
  if "torch" in runners:
    for n in names:
      if n != "torch":
        ratios[n] = statistics.median([a / b for a, b in zip(rates[n], rates["torch"])])
  print(f"  [width {width}] median img/s: " +
        ", ".join(f"{n} {v:.1f}" for n, v in summary.items()), flush=True)
  for n, v in ratios.items():
    print(f"  [width {width}] median per-round ratio {n}/torch: {v:.3f}", flush=True)
  return summary, ratios, k


def main(argv=None):
  args = parse_args(argv)
  set_xla_flags(args)
  sys.path.insert(0, ROOT)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  do_jax, do_torch = not args.torch_only, not args.jax_only
  widths = [int(w) for w in args.widths.split(",") if w]
  dtypes = [d for d in args.jax_dtypes.split(",") if d]

  print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
  print(f"host: {platform.node()}  cpu: {cpu_model()}  os.cpu_count(): {os.cpu_count()}  "
        f"python {platform.python_version()}")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}  "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  if do_jax:
    import flax
    import jax
    import jaxlib
    import optax
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, "
          f"optax {optax.__version__}, backend {jax.default_backend()}, "
          f"devices {jax.devices()}")
  if do_torch:
    import torch
    import torch_mec
    threads = torch_mec.set_threads()
    print(f"torch {torch.__version__}, threads {threads}, interop "
          f"{torch.get_num_interop_threads()}, channels_last fp32")
  print(f"batch {args.batch}, widths {widths}, jax dtypes {dtypes if do_jax else '-'}",
        flush=True)

  results = []
  for w in widths:
    results.append((w, *bench_width(args, w, args.config, dtypes, do_jax, do_torch)))

  print("\nsummary (median img/s over rounds; ratio = median of per-round JAX/PyTorch):")
  for w, summary, ratios, k in results:
    parts = [f"{n} {v:.1f}" for n, v in summary.items()]
    parts += [f"ratio {n[4:]} {v:.3f}" for n, v in ratios.items()]
    print(f"  width {w:3d} (K={k}): " + ", ".join(parts))


if __name__ == "__main__":
  main()
