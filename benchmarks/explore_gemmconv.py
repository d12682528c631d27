"""3x3 convolution as im2col + GEMM vs XLA's (Eigen) convolution, per ResNet-18 layer shape:
forward, input gradient (stride 1: the same op on the output gradient with the flipped
kernel), weight gradient (patches^T @ g). PyTorch's convolution for reference.

  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot python benchmarks/explore_gemmconv.py --width 64
"""
import argparse, os, statistics, time
p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=64)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--reps", type=int, default=2)
p.add_argument("--layers", default="0,1,2,3")
p.add_argument("--gemm", action="store_true", help="also time im2col + GEMM")
a = p.parse_args()
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
import numpy as np, jax, jax.numpy as jnp, torch
torch.set_num_threads(os.cpu_count())
def conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
def patches(x):
  N, H, W, C = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)], axis=-1).reshape(N * H * W, 9 * C)
def gconv(x, k):
  N, H, W, C = x.shape
  return (patches(x) @ k.reshape(9 * C, -1)).reshape(N, H, W, -1)
def gdw(x, g):
  return (patches(x).T @ g.reshape(-1, g.shape[-1])).reshape(3, 3, x.shape[-1], g.shape[-1])
def xdw(x, k, g):
  return jax.vjp(lambda k: conv(x, k), k)[1](g)[0]
def timeit(f, reps):
  f(); time.sleep(0.1); t = time.perf_counter()
  for _ in range(reps): f()
  return (time.perf_counter() - t) / reps * 1e3
print(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")
w = a.width
shapes = [(32, w), (16, 2 * w), (8, 4 * w), (4, 8 * w)]
for li in map(int, a.layers.split(",")):
  H, C = shapes[li]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((a.batch, H, H, C), dtype=np.float32); kern = rng.standard_normal((3, 3, C, C), dtype=np.float32) * 0.05
  g = rng.standard_normal((a.batch, H, H, C), dtype=np.float32)
  xj, kj, gj = map(jnp.asarray, (x, kern, g))
  f = {"xla_fwd": jax.jit(conv), "gemm_fwd": jax.jit(gconv), "xla_dw": jax.jit(xdw), "gemm_dw": jax.jit(gdw),
       "xla_dx": jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0])}
  e_fwd = float(np.max(np.abs(f["gemm_fwd"](xj, kj) - f["xla_fwd"](xj, kj))) / np.max(np.abs(f["xla_fwd"](xj, kj))))
  e_dw = float(np.max(np.abs(f["gemm_dw"](xj, gj) - f["xla_dw"](xj, kj, gj))) / np.max(np.abs(f["xla_dw"](xj, kj, gj))))
  calls = {"xla_fwd": lambda: f["xla_fwd"](xj, kj).block_until_ready(), "gemm_fwd": lambda: f["gemm_fwd"](xj, kj).block_until_ready(),
           "xla_dw": lambda: f["xla_dw"](xj, kj, gj).block_until_ready(), "gemm_dw": lambda: f["gemm_dw"](xj, gj).block_until_ready(),
           "xla_dx": lambda: f["xla_dx"](xj, kj, gj).block_until_ready()}
  if not a.gemm:
    calls.pop("gemm_fwd"); calls.pop("gemm_dw")
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  kt = torch.from_numpy(kern).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
  gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  calls["torch_fwd"] = lambda: torch.nn.functional.conv2d(xt, kt, padding=1)
  calls["torch_dx"] = lambda: torch.ops.aten.convolution_backward(gt, xt, kt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])
  calls["torch_dw"] = lambda: torch.ops.aten.convolution_backward(gt, xt, kt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False])
  res = {n: [] for n in calls}
  for r in range(a.rounds):
    for n, c in calls.items(): res[n].append(timeit(c, a.reps))
  gf = 2 * a.batch * H * H * 9 * C * C / 1e9
  print(f"H{H} C{C} ({gf:.1f} GFLOP): " + ", ".join(f"{n} {statistics.median(v):.1f}ms" for n, v in res.items()) + f"  | err fwd {e_fwd:.0e} dw {e_dw:.0e}", flush=True)
