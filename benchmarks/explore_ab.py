"""In-process A/B of the real MEC train step: the frozen reference models
(benchmarks/explore_ref: mecjax/models at 761c14f) against the current mecjax/models,
optionally with PyTorch, interleaved round by round.

  python benchmarks/explore_ab.py --width 16 --rounds 5 [--torch] [--dtypes float32,bfloat16]
"""
import argparse, contextlib, os, statistics, sys, time
p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=16)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--k", type=int, default=0)
p.add_argument("--dtypes", default="float32")
p.add_argument("--variants", default="ref,new")
p.add_argument("--torch", action="store_true")
p.add_argument("--mallopt", action="store_true", help="glibc: one arena, no mmap, no trim")
p.add_argument("--xla-flags", default="--xla_cpu_experimental_ynn_fusion_type=")
a = p.parse_args()
os.environ["XLA_FLAGS"] = a.xla_flags
if a.mallopt:
  import ctypes
  _libc = ctypes.CDLL("libc.so.6")
  for _param, _value in ((-8, 1), (-4, 0), (-1, 2**31 - 1)):  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD
    assert _libc.mallopt(_param, _value) == 1
HERE = os.path.dirname(os.path.abspath(__file__)); ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
import numpy as np, jax
import bench_step as bs
import mecjax.models as models
from explore_ref import heads as ref_heads, resnet as ref_resnet


@contextlib.contextmanager
def reference_models():
  enc, head = dict(models.ENCODERS), models.MLPHead
  models.ENCODERS["resnet18_cifar"] = lambda cfg: ref_resnet.resnet18(
      width=cfg.width, cifar_stem=True, zero_init_residual=cfg.zero_init_residual,
      dtype=models.dtype_of(cfg))
  models.MLPHead = ref_heads.MLPHead
  try:
    yield
  finally:
    models.ENCODERS.clear(); models.ENCODERS.update(enc); models.MLPHead = head


@contextlib.contextmanager
def no_metrics():
  """The step without the logged monitors (effective rank, spectral norm): their cost."""
  import jax.numpy as jnp
  from mecjax import losses, monitors, train
  saved = monitors.collapse_metrics, losses.mec_spectral_norm
  monitors.collapse_metrics = lambda z: {}
  losses.mec_spectral_norm = lambda *a, **k: jnp.zeros(())
  try:
    yield
  finally:
    monitors.collapse_metrics, losses.mec_spectral_norm = saved


def main():
  print(f"XLA_FLAGS={os.environ['XLA_FLAGS']} width {a.width} batch {a.batch}", flush=True)
  rng = np.random.default_rng(0)
  views = [rng.standard_normal((a.batch, 32, 32, 3), dtype=np.float32) for _ in range(2)]
  labels = rng.integers(0, 10, size=(a.batch,), dtype=np.int32)
  k = a.k or (2 if a.width >= 48 else 6)
  runners = {}
  for dt in a.dtypes.split(","):
    for var in a.variants.split(","):
      cfg = bs.load_config(os.path.join(ROOT, "configs/mec_cifar10.py"))
      cfg.model.width = a.width / 64; cfg.model.dtype = dt; cfg.batch_size = a.batch
      ctx = {"ref": reference_models, "nometrics": no_metrics}.get(var, contextlib.nullcontext)()
      t = time.perf_counter()
      with ctx:
        r = bs.JaxStep(cfg, a.batch, views, labels)
        r.run(2)   # traced (and compiled) inside the context
      print(f"  {var}/{dt}: compile+2 steps {time.perf_counter() - t:.1f}s loss {float(r.metrics['loss']):.6f}", flush=True)
      runners[f"{var}_{dt}"] = r
  if a.torch:
    import torch_mec
    torch_mec.set_threads()
    cfg = bs.load_config(os.path.join(ROOT, "configs/mec_cifar10.py"))
    cfg.model.width = a.width / 64; cfg.batch_size = a.batch
    r = bs.TorchStep(cfg, a.batch, views, labels); r.run(2); runners["torch"] = r
  rates = {n: [] for n in runners}
  for rnd in range(a.rounds):
    for n, r in runners.items():
      rates[n].append(k * 2 * a.batch / bs.timed(r.run, k, 0.3))
    print(f"  round {rnd}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()), flush=True)
  names = list(runners); base = names[0]
  print("median img/s: " + ", ".join(f"{n} {statistics.median(v):.1f}" for n, v in rates.items()))
  for n in names[1:]:
    print(f"median ratio {n}/{base}: {statistics.median([x / y for x, y in zip(rates[n], rates[base])]):.3f}")
  if "torch" in rates:
    for n in names:
      if n != "torch":
        print(f"median ratio {n}/torch: {statistics.median([x / y for x, y in zip(rates[n], rates['torch'])]):.3f}")


main()
