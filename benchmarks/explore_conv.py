"""Micro-benchmark one conv layer: forward, input-grad, weight-grad; XLA vs PyTorch (channels_last).

  python benchmarks/explore_conv.py --width 16 --batch 256
Prints ms per op (median over rounds, interleaved).
"""
import argparse, os, statistics, sys, time
p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=16)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--only", default="")
a = p.parse_args()
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
import numpy as np, jax, jax.numpy as jnp, torch
torch.set_num_threads(os.cpu_count())
w = a.width; N = a.batch
# (H, Cin, Cout, k, stride)
shapes = [(32, 3, w, 3, 1), (32, w, w, 3, 1), (32, w, 2*w, 3, 2), (16, 2*w, 2*w, 3, 1), (32, w, 2*w, 1, 2),
          (16, 2*w, 4*w, 3, 2), (8, 4*w, 4*w, 3, 1), (8, 4*w, 8*w, 3, 2), (4, 8*w, 8*w, 3, 1)]
if a.only: shapes = [shapes[int(i)] for i in a.only.split(",")]
def conv(x, k, s, pad):
  return jax.lax.conv_general_dilated(x, k, (s, s), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
def timeit(f, reps):
  f()
  t = time.perf_counter()
  for _ in range(reps): f()
  return (time.perf_counter() - t) / reps * 1e3
print(f"XLA_FLAGS={os.environ['XLA_FLAGS']} width {w} batch {N}")
print(f"{'H':>3} {'cin':>4} {'cout':>4} k s | {'jfwd':>7} {'jdx':>7} {'jdw':>7} | {'tfwd':>7} {'tdx':>7} {'tdw':>7}")
tot = np.zeros(6)
for (H, cin, cout, k, s) in shapes:
  pad = (k - 1) // 2
  rng = np.random.default_rng(0)
  x = rng.standard_normal((N, H, H, cin), dtype=np.float32)
  kern = rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.1
  Ho = H // s
  g = rng.standard_normal((N, Ho, Ho, cout), dtype=np.float32)
  xj, kj, gj = map(jnp.asarray, (x, kern, g))
  fwd = jax.jit(lambda x, k: conv(x, k, s, pad))
  dx = jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k, s, pad), x)[1](g)[0])
  dw = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv(x, k, s, pad), k)[1](g)[0])
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  kt = torch.from_numpy(kern).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
  gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  tf = lambda: torch.nn.functional.conv2d(xt, kt, stride=s, padding=pad)
  cb = lambda m: torch.ops.aten.convolution_backward(gt, xt, kt, None, [s, s], [pad, pad], [1, 1], False, [0, 0], 1, m)
  fns = [lambda: fwd(xj, kj).block_until_ready(), lambda: dx(xj, kj, gj).block_until_ready(),
         lambda: dw(xj, kj, gj).block_until_ready(), tf, lambda: cb([True, False, False]),
         lambda: cb([False, True, False])]
  res = [[] for _ in fns]
  for r in range(a.rounds):
    for i, f in enumerate(fns): res[i].append(timeit(f, a.reps))
  med = np.array([statistics.median(r) for r in res]); tot += med
  print(f"{H:3d} {cin:4d} {cout:4d} {k} {s} | " + " ".join(f"{m:7.2f}" for m in med[:3]) + " | " + " ".join(f"{m:7.2f}" for m in med[3:]), flush=True)
print("sum             | " + " ".join(f"{m:7.2f}" for m in tot[:3]) + " | " + " ".join(f"{m:7.2f}" for m in tot[3:]))
