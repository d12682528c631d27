"""Weight-gradient formulations for a 3x3 conv (NHWC, pad 1): XLA's autodiff conv vs
explicit im2col + dot vs 9 shifted dots; PyTorch convolution_backward for reference.

  python benchmarks/explore_dw.py --width 16
"""
import argparse, os, statistics, time
p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=16)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--reps", type=int, default=3)
a = p.parse_args()
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
import numpy as np, jax, jax.numpy as jnp, torch
torch.set_num_threads(os.cpu_count())
hp = jax.lax.Precision.HIGHEST
def conv(x, k, s=1):
  return jax.lax.conv_general_dilated(x, k, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
def dw_xla(x, k, g, s):
  return jax.vjp(lambda k: conv(x, k, s), k)[1](g)[0]
def taps(x, s, Ho, Wo):
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [xp[:, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s, :] for i in range(3) for j in range(3)]
def dw_im2col(x, k, g, s):
  N, Ho, Wo, Co = g.shape; Ci = x.shape[-1]
  pt = jnp.concatenate(taps(x, s, Ho, Wo), axis=-1).reshape(-1, 9 * Ci)
  return jnp.dot(pt.T, g.reshape(-1, Co), precision=hp).reshape(3, 3, Ci, Co)
def dw_9dots(x, k, g, s):
  N, Ho, Wo, Co = g.shape; Ci = x.shape[-1]
  g2 = g.reshape(-1, Co)
  return jnp.stack([jnp.dot(t.reshape(-1, Ci).T, g2, precision=hp) for t in taps(x, s, Ho, Wo)]).reshape(3, 3, Ci, Co)
def dw_3dots(x, k, g, s):  # concat the 3 kw taps per kh row
  N, Ho, Wo, Co = g.shape; Ci = x.shape[-1]
  ts = taps(x, s, Ho, Wo); g2 = g.reshape(-1, Co)
  rows = [jnp.dot(jnp.concatenate(ts[3 * i:3 * i + 3], -1).reshape(-1, 3 * Ci).T, g2, precision=hp) for i in range(3)]
  return jnp.stack(rows).reshape(3, 3, Ci, Co)
def dw_einsum(x, k, g, s):
  N, Ho, Wo, Co = g.shape; Ci = x.shape[-1]
  return jnp.stack([jnp.einsum("nhwc,nhwd->cd", t, g, precision=hp) for t in taps(x, s, Ho, Wo)]).reshape(3, 3, Ci, Co)
variants = dict(xla=dw_xla, im2col=dw_im2col, dots9=dw_9dots, dots3=dw_3dots)
def timeit(f, reps):
  f(); time.sleep(0.1); t = time.perf_counter()
  for _ in range(reps): f()
  return (time.perf_counter() - t) / reps * 1e3
w = a.width
for (H, ci, co, s) in [(32, w, w, 1), (32, w, 2 * w, 2), (16, 2 * w, 2 * w, 1), (8, 4 * w, 4 * w, 1), (4, 8 * w, 8 * w, 1)]:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((a.batch, H, H, ci), dtype=np.float32); kern = rng.standard_normal((3, 3, ci, co), dtype=np.float32)
  g = rng.standard_normal((a.batch, H // s, H // s, co), dtype=np.float32)
  xj, kj, gj = map(jnp.asarray, (x, kern, g))
  fns = {n: jax.jit(lambda x, k, g, f=f: f(x, k, g, s)) for n, f in variants.items()}
  ref = np.asarray(fns["xla"](xj, kj, gj))
  errs = {n: float(np.max(np.abs(np.asarray(f(xj, kj, gj)) - ref)) / np.max(np.abs(ref))) for n, f in fns.items()}
  calls = {n: (lambda f=f: jax.block_until_ready(f(xj, kj, gj))) for n, f in fns.items()}
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  kt = torch.from_numpy(kern).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
  gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  calls["torch"] = lambda: torch.ops.aten.convolution_backward(gt, xt, kt, None, [s, s], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False])
  res = {n: [] for n in calls}
  for r in range(a.rounds):
    for n, f in calls.items(): res[n].append(timeit(f, a.reps))
  print(f"H{H} {ci}->{co} s{s}: " + ", ".join(f"{n} {statistics.median(v):.2f}" + (f" ({errs[n]:.0e})" if n in errs else "") for n, v in res.items()), flush=True)
