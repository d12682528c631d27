"""Per-channel sum and sum of squares of an NHWC tensor: XLA formulations vs torch.

  python benchmarks/explore_reduce.py --width 16
"""
import argparse, os, statistics, time
p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=16)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--reps", type=int, default=10)
a = p.parse_args()
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
import numpy as np, jax, jax.numpy as jnp, torch
torch.set_num_threads(os.cpu_count())
def timeit(f, reps):
  f(); t = time.perf_counter()
  for _ in range(reps): f()
  return (time.perf_counter() - t) / reps * 1e3
hp = jax.lax.Precision.HIGHEST
def v_current(x):
  xf = x; ax = (0, 1, 2)
  return jnp.mean(xf, ax), jnp.mean(xf * xf, ax)
def v_rows(x):
  N, H, W, C = x.shape
  x2 = x.reshape(N, H * W * C)
  s1 = jnp.sum(x2, 0).reshape(H * W, C); s2 = jnp.sum(x2 * x2, 0).reshape(H * W, C)
  return s1.sum(0) / (N * H * W), s2.sum(0) / (N * H * W)
def v_wide(x, k=8):
  N, H, W, C = x.shape
  x2 = x.reshape(-1, k * C)
  return jnp.mean(x2, 0).reshape(k, C).mean(0), jnp.mean(x2 * x2, 0).reshape(k, C).mean(0)
def v_dot(x):
  N, H, W, C = x.shape; M = N * H * W
  x2 = x.reshape(M, C); o = jnp.full((M,), 1.0 / M, x.dtype)
  return jnp.dot(o, x2, precision=hp), jnp.dot(o, x2 * x2, precision=hp)
def v_dot2(x):
  N, H, W, C = x.shape; M = N * H * W
  x2 = x.reshape(M, C); o = jnp.full((M,), 1.0 / M, x.dtype)
  s = jnp.dot(o, jnp.concatenate([x2, x2 * x2], 1), precision=hp)
  return s[:C], s[C:]
def v_dotN(x):
  # contract over N with a ones vector (rows of H*W*C contiguous), then small reduce
  N, H, W, C = x.shape
  x2 = x.reshape(N, H * W * C); o = jnp.full((N,), 1.0 / N, x.dtype)
  s1 = jnp.dot(o, x2, precision=hp).reshape(H * W, C).mean(0)
  s2 = jnp.dot(o, x2 * x2, precision=hp).reshape(H * W, C).mean(0)
  return s1, s2
def v_gram(x):
  N, H, W, C = x.shape; M = N * H * W
  x2 = x.reshape(M, C); o = jnp.full((M,), 1.0 / M, x.dtype)
  return jnp.dot(o, x2, precision=hp), jnp.diagonal(jnp.dot(x2.T, x2, precision=hp)) / M
variants = dict(current=v_current, rows=v_rows, wide8=v_wide, dot=v_dot, dot_concat=v_dot2, dotN=v_dotN, gram=v_gram)
print(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")
for H, C in [(32, a.width), (16, 2 * a.width), (8, 4 * a.width), (4, 8 * a.width)]:
  x = np.random.default_rng(0).standard_normal((a.batch, H, H, C), dtype=np.float32) + 0.5
  xj = jnp.asarray(x)
  ref = [np.mean(x.astype(np.float64), (0, 1, 2)), np.mean(x.astype(np.float64) ** 2, (0, 1, 2))]
  fns = {k: jax.jit(f) for k, f in variants.items()}
  errs = {k: max(float(np.max(np.abs(np.asarray(o) - r) / np.abs(r))) for o, r in zip(f(xj), ref)) for k, f in fns.items()}
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  def tfn():
    return torch.batch_norm_update_stats(xt, None, None, 0.1) if hasattr(torch, "batch_norm_update_stats") else torch.var_mean(xt, (0, 2, 3))
  calls = {k: (lambda f=f: jax.block_until_ready(f(xj))) for k, f in fns.items()}
  calls["torch_var_mean"] = lambda: torch.var_mean(xt, (0, 2, 3))
  res = {k: [] for k in calls}
  for r in range(a.rounds):
    for k, f in calls.items(): res[k].append(timeit(f, a.reps))
  print(f"H{H} C{C}: " + ", ".join(f"{k} {statistics.median(v):.2f}ms" + (f" (err {errs[k]:.1e})" if k in errs else "") for k, v in res.items()), flush=True)
