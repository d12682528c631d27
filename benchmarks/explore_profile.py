"""Profile the real mecjax MEC step on CPU: per-HLO-op time from a jax.profiler trace.

  python benchmarks/explore_profile.py --width 16 [--dtype bfloat16] [--steps 3]

Caveat, measured: XLA:CPU runs convolution thunks asynchronously on its thread pool, so a
convolution's trace event covers only its dispatch (microseconds) and the fusions that run
beside it absorb its time. Use the trace for fusions and dots; time convolutions with
benchmarks/explore_conv.py or by ablation (benchmarks/explore_backbone.py).
"""
import argparse, collections, glob, gzip, json, os, re, sys, time
p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=16)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--dtype", default="float32")
p.add_argument("--steps", type=int, default=3)
p.add_argument("--out", default="/tmp/prof")
p.add_argument("--top", type=int, default=40)
p.add_argument("--xla-flags", default="--xla_cpu_experimental_ynn_fusion_type=")
a = p.parse_args()
os.environ["XLA_FLAGS"] = a.xla_flags
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
import numpy as np, jax
import bench_step as bs
cfg = bs.load_config(os.path.join(ROOT, "configs/mec_cifar10.py"))
cfg.model.width = a.width / 64; cfg.model.dtype = a.dtype; cfg.batch_size = a.batch
rng = np.random.default_rng(0)
views = [rng.standard_normal((a.batch, 32, 32, 3), dtype=np.float32) for _ in range(2)]
labels = rng.integers(0, 10, size=(a.batch,), dtype=np.int32)
r = bs.JaxStep(cfg, a.batch, views, labels)
r.run(2)
hlo = r.update.lower(r.state, r.views, r.labels).compile().as_text()
open(os.path.join(a.out, f"hlo_w{a.width}_{a.dtype}.txt"), "w").write(hlo)
# map instruction name -> op description
kinds = {}
for line in hlo.splitlines():
  m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w\-]*)\(", line)
  if m:
    name, shape, op = m.groups()
    extra = ""
    k = re.search(r'kind=(\w+)', line)
    if k: extra = k.group(1)
    cc = re.search(r'custom_call_target="([^"]+)"', line)
    if cc: extra = cc.group(1)
    kinds[name] = (op + (":" + extra if extra else ""), shape)
t = time.perf_counter(); r.run(a.steps); dt = (time.perf_counter() - t) / a.steps
print(f"untraced step {dt*1e3:.0f} ms  ({2*a.batch/dt:.0f} img/s)")
d = os.path.join(a.out, f"trace_w{a.width}_{a.dtype}")
os.system(f"rm -rf {d}")
with jax.profiler.trace(d, create_perfetto_trace=True):
  r.run(a.steps)
f = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
ev = json.load(gzip.open(f))
evs = ev["traceEvents"] if isinstance(ev, dict) else ev
tot = collections.Counter(); cnt = collections.Counter()
for e in evs:
  if e.get("ph") == "X":
    tot[e["name"]] += e.get("dur", 0); cnt[e["name"]] += 1
# per-op: names of thunks look like HLO instruction names
byname = {n: v for n, v in tot.items() if n in kinds}
bykind = collections.Counter()
for n, v in byname.items(): bykind[kinds[n][0]] += v
total_ops = sum(byname.values())
print(f"thunk time per step (sum over threads) {total_ops/a.steps/1e3:.0f} ms")
print("by kind (ms/step):")
for k, v in bykind.most_common(): print(f"  {k:40s} {v/a.steps/1e3:8.1f}")
print("top ops:")
for n, v in sorted(byname.items(), key=lambda x: -x[1])[:a.top]:
  print(f"  {n:40s} {kinds[n][0]:28s} {kinds[n][1][:60]:60s} {v/a.steps/1e3:7.1f}")
other = [(n, v) for n, v in tot.most_common(15) if n not in kinds]
print("non-op events:", [(n, round(v/a.steps/1e3,1)) for n, v in other])
