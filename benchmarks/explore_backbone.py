"""A/B of the CIFAR ResNet-18 alone (one view, train-mode BN): forward, and forward+backward
(gradients of params and batch_stats update), reference models vs current, interleaved.

  python benchmarks/explore_backbone.py --width 16 [--dtype bfloat16] [--torch]
"""
import argparse, os, statistics, sys, time
p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=16)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--dtype", default="float32")
p.add_argument("--torch", action="store_true")
p.add_argument("--xla-flags", default="--xla_cpu_experimental_ynn_fusion_type=")
a = p.parse_args()
os.environ["XLA_FLAGS"] = a.xla_flags
HERE = os.path.dirname(os.path.abspath(__file__)); sys.path[:0] = [os.path.dirname(HERE), HERE]
import numpy as np, jax, jax.numpy as jnp
from mecjax.models import resnet as new_resnet
from explore_ref import resnet as ref_resnet
dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[a.dtype]
x = jnp.asarray(np.random.default_rng(0).standard_normal((a.batch, 32, 32, 3), dtype=np.float32))
def build(mod):
  net = mod.resnet18(width=a.width / 64, cifar_stem=True, zero_init_residual=False, dtype=dtype)
  v = net.init(jax.random.key(0), x, train=True)
  r = jax.random.normal(jax.random.key(1), (a.batch, net.num_features))
  def loss(params, bs, x):
    f, upd = net.apply({"params": params, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(f * r), upd
  fwd = jax.jit(loss); bwd = jax.jit(jax.grad(loss, has_aux=True))
  return v, fwd, bwd
fns = {}
outs = {}
for name, mod in (("ref", ref_resnet), ("new", new_resnet)):
  v, fwd, bwd = build(mod)
  outs[name] = (fwd(v["params"], v["batch_stats"], x), bwd(v["params"], v["batch_stats"], x))
  fns[f"{name}_fwd"] = lambda fwd=fwd, v=v: jax.block_until_ready(fwd(v["params"], v["batch_stats"], x))
  fns[f"{name}_fwdbwd"] = lambda bwd=bwd, v=v: jax.block_until_ready(bwd(v["params"], v["batch_stats"], x))
def rel(a_, b_):
  a_, b_ = np.asarray(a_, np.float64), np.asarray(b_, np.float64)
  return float(np.max(np.abs(a_ - b_)) / (np.max(np.abs(b_)) + 1e-30))
errs = [rel(p_, q_) for p_, q_ in zip(jax.tree.leaves(outs["new"]), jax.tree.leaves(outs["ref"]))]
print(f"XLA_FLAGS={a.xla_flags} width {a.width} dtype {a.dtype}; max rel diff new/ref over outputs+grads+stats: {max(errs):.2e}")
if a.torch:
  import torch; sys.path.insert(0, HERE); import torch_mec
  torch_mec.set_threads()
  tnet = torch_mec.CifarResNet18(a.width / 64).to(memory_format=torch.channels_last)
  xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  rt = torch.from_numpy(np.asarray(jax.random.normal(jax.random.key(1), (a.batch, tnet.num_features))))
  def tf():
    with torch.no_grad(): tnet(xt)
  def tfb():
    tnet.zero_grad(); (tnet(xt) * rt).sum().backward()
  fns["torch_fwd"] = tf; fns["torch_fwdbwd"] = tfb
res = {k: [] for k in fns}
for rnd in range(a.rounds):
  for k, f in fns.items():
    f(); time.sleep(0.2); t = time.perf_counter()
    for _ in range(a.reps): f()
    res[k].append((time.perf_counter() - t) / a.reps * 1e3)
print("median ms: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in res.items()))
for s in ("fwd", "fwdbwd"):
  print(f"median ratio new/ref {s} time: {statistics.median([n / r for n, r in zip(res['new_' + s], res['ref_' + s])]):.3f}")
