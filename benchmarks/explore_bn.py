"""Micro-benchmark BatchNorm+ReLU forward and forward+backward: the frozen reference
BatchNorm (benchmarks/explore_ref), the current mecjax BatchNorm, and PyTorch (channels_last).

  python benchmarks/explore_bn.py --width 16
"""
import argparse, os, statistics, sys, time
p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=16)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--reps", type=int, default=5)
p.add_argument("--shapes", default="")
a = p.parse_args()
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
HERE = os.path.dirname(os.path.abspath(__file__)); sys.path[:0] = [os.path.dirname(HERE), HERE]
import numpy as np, jax, jax.numpy as jnp, torch
from mecjax.models.norm import BatchNorm
from explore_ref.norm import BatchNorm as RefBatchNorm
torch.set_num_threads(os.cpu_count())
N = a.batch; w = a.width
def timeit(f, reps):
  f(); t = time.perf_counter()
  for _ in range(reps): f()
  return (time.perf_counter() - t) / reps * 1e3
print(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")
shapes = [(N, 32, 32, w), (N, 16, 16, 2*w), (N, 8, 8, 4*w), (N, 4, 4, 8*w), (N, 2048), (N, 512)]
if a.shapes: shapes = [shapes[int(i)] for i in a.shapes.split(",")]
for shape in shapes:
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 2 + 0.5
  C = shape[-1]
  xj = jnp.asarray(x); gj = jnp.asarray(np.random.default_rng(1).standard_normal(shape, dtype=np.float32))
  fns, outs = [], []
  for cls in (RefBatchNorm, BatchNorm):
    bn = cls()
    v = bn.init(jax.random.key(0), xj, use_running_average=False)
    v = {"params": {"scale": jnp.linspace(0.5, 1.5, C), "bias": jnp.linspace(-.2, .2, C)}, "batch_stats": v["batch_stats"]}
    def f(params, x, bn=bn, v=v):
      y, upd = bn.apply({"params": params, "batch_stats": v["batch_stats"]}, x, use_running_average=False, mutable=["batch_stats"])
      return jnp.maximum(y, 0), upd
    def loss(params, x, g, f=f):
      y, upd = f(params, x); return jnp.sum(y * g), upd
    fwd = jax.jit(f); bwd = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    outs.append((fwd(v["params"], xj), bwd(v["params"], xj, gj)))
    fns += [lambda fwd=fwd, v=v: jax.block_until_ready(fwd(v["params"], xj)),
            lambda bwd=bwd, v=v: jax.block_until_ready(bwd(v["params"], xj, gj))]
  rel = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b))) + 1e-30))
  errs = [rel(a_, b_) for a_, b_ in zip(jax.tree.leaves(outs[1]), jax.tree.leaves(outs[0]))]
  if len(shape) == 4:
    tb = torch.nn.BatchNorm2d(C).to(memory_format=torch.channels_last)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  else:
    tb = torch.nn.BatchNorm1d(C); xt = torch.from_numpy(x)
  gt = torch.ones_like(xt)
  def tf():
    with torch.no_grad(): torch.relu(tb(xt))
  def tfb():
    xx = xt.detach().requires_grad_(); y = torch.relu(tb(xx)); y.backward(gt)
  fns += [tf, tfb]
  res = [[] for _ in fns]
  for r in range(a.rounds):
    for i, fn in enumerate(fns): time.sleep(0.1); res[i].append(timeit(fn, a.reps))
  m = [statistics.median(r) for r in res]
  print(f"{shape}: ref fwd {m[0]:.2f} f+b {m[1]:.2f} | new fwd {m[2]:.2f} f+b {m[3]:.2f} | torch fwd {m[4]:.2f} f+b {m[5]:.2f} ms | max rel diff new/ref {max(errs):.1e}", flush=True)
