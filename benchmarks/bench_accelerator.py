"""MEC on whatever JAX finds (GPU, TPU, or the CPU): train-step throughput and a short run.

  python benchmarks/bench_accelerator.py [--out DIR] [--data ARCHIVE] [--tiny]

Part 1, the loop's whole jitted MEC train step (``mecjax.lowering.build_step``: on-device
augmentation, forward, loss, backward, SGD/AdamW, EMA teacher, online probe, monitors) for
CIFAR ResNet-18 (batch 512; float32 and bfloat16), ResNet-50 at 224 and ViT-S/16 at 224
(bfloat16, batch 256 per device). For each: images/s with every view counted, peak device
memory (``device.memory_stats()``; None on the CPU), MFU (XLA's cost analysis of the step
over the time, against the chip's dense bfloat16 peak where it is known), the largest
per-device batch that fits (doubling until out of memory, bounded by --max-doublings) and
images/s with ``model.kernels`` "cpu" and "xla" ("auto" is "cpu" on the CPU, "xla" on
accelerators).

Part 2, a MEC CIFAR-10 run: full-width CIFAR ResNet-18, the train split held in device
memory (batches gathered on the device, no host input), --steps steps, then the weighted kNN
monitor (bank: the train split, queries: the test split) on device: its figure and the
wall-clock time to it. Images: the CIFAR-10 JPEG archive (--data; by default the one beside
the repository when present) or, without it, synthetic images (the kNN figure is then
chance, the timings still hold).

Every case's steps (kernel variants and batch doublings included), one initialisation per
case, and the run's programs (with its images' decoding) are compiled first,
--compile-threads at a time (XLA compiles without holding the GIL), then run one at a time,
so no timing shares the machine with a compilation.

``--tiny`` runs the same code at tiny sizes (ResNets at width 1/16 with one block per stage,
16/32 px, one timed step, one batch doubling, a 2-step run on 64 images; LLVM at -O0 unless
XLA_FLAGS sets a level), the kernel comparison and the batch search on the first case only,
so a test keeps the script working. Its seven compilations of a whole step, five of their
initialisation and the tracing before them are nearly all of its time: 132 s on a quiet
2-core AMD EPYC VM (2026-12-02; 146 s with an initialisation per step and the run compiled
after the cases; 68-73 s on the faster Intel Xeon VM earlier that day). Writes
DIR/bench_accelerator.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import sys
import time
from typing import Callable

# --tiny runs each program once or twice, so LLVM's optimisation is most of its time: -O0
# there unless the caller chose a level (read by XLA when JAX starts its backend, so before
# ``import jax``). The accelerator runs keep XLA's defaults.
if "--tiny" in sys.argv[1:]:
  _flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mecjax import configlib, evaluators, lowering, parallel  # noqa: E402
from mecjax.data import sources  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")
# Dense bfloat16 peak FLOP/s by device_kind substring (vendor figures).
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v5 lite": 197e12,
         "TPU v5e": 197e12, "TPU v4": 275e12, "TPU v5p": 459e12, "TPU v6": 918e12}

# name, config, dtype, per-device batch (None: global batch as given)
CASES = [("CIFAR ResNet-18 fp32", "configs/mec_cifar10.py", "float32", None, 512),
         ("CIFAR ResNet-18 bf16", "configs/mec_cifar10.py", "bfloat16", None, 512),
         ("ResNet-50 224 bf16", "configs/mec_imagenet.py", "bfloat16", 256, None),
         ("ViT-S/16 224 bf16", "configs/mec_imagenet_vit.py:vit_s", "bfloat16", 256, None)]


# --tiny: the ResNets at 4 channels in the first stage and one block per stage (every block
# type, with and without a downsampling shortcut, at a fraction of the compile time); the
# training run's images and batch.
TINY_WIDTH, TINY_STAGES = 0.0625, (1, 1, 1, 1)
TINY_RUN = {"train": 64, "test": 32, "batch": 16, "side": 16}


def peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  return next((v for k, v in PEAKS.items() if k in kind), None)


def peak_memory(device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats:
    return None
  return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


def case_config(spec: str, dtype: str, kernels: str, tiny: bool):
  config = configlib.load(spec + (",smoke" if ":" in spec else ":smoke") if tiny else spec)
  config.model.dtype = dtype
  config.model.kernels = kernels
  if tiny:
    config.data.image_size = 16 if "cifar" in spec else 32
    if config.model.name != "vit_small":   # the smoke ViT is already 48 wide, 2 blocks deep
      config.model.width, config.model.stage_sizes = TINY_WIDTH, TINY_STAGES
  return config


def prepare(config, batch: int, with_init: bool = True) -> dict:
  """Build and compile the train step at a global batch, and (``with_init``) its
  initialisation, from abstract shapes: nothing is put on the device until ``time_step``.
  Safe to run in several threads at once (XLA compiles without the GIL); an exception is
  kept, not raised, so the batch search can read an out-of-memory as its end."""
  try:
    s = lowering.build_step(config, batch)
    init = lowering.compile_init(s) if with_init else None
    t = time.time()
    compiled = s.step.lower(s.state, s.batch).compile()
    compile_s = time.time() - t
  except Exception as e:   # noqa: BLE001 - re-raised by time_step unless the search ends on it
    return {"error": e, "name": config.model.name}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"step": s, "init": init, "compiled": compiled, "batch": batch,
          "compile_seconds": compile_s, "name": config.model.name,
          "flops_per_step": float(cost.get("flops", 0.0)) if cost else 0.0}


def share_init(source: dict, others: list[dict]) -> None:
  """Give ``others`` (the same case at other kernels or batches) the compiled initialisation
  of ``source``: the kernels and the batch change neither the train state's tree nor its
  values, so one compilation serves them all (each call makes a fresh state)."""
  if "error" in source:
    return
  shapes = lambda p: jax.tree.map(lambda a: (a.shape, a.dtype), p["step"].state)
  for p in others:
    if "error" not in p:
      if shapes(p) != shapes(source):
        raise AssertionError(f"{p['name']}: the train state differs between kernel variants "
                             "or batches of one case")
      p["init"] = source["init"]


def time_step(p: dict, steps: int) -> dict:
  """Time a prepared step (one warm-up call first); images/s counts every view."""
  if "error" in p:
    raise p["error"]
  state, data = lowering.concrete_inputs(p["step"], init=p["init"])
  compiled = p["compiled"]
  state, m = compiled(state, data)       # warm-up
  jax.block_until_ready(m)
  t = time.time()
  for _ in range(steps):
    state, m = compiled(state, data)
  jax.block_until_ready(m)
  dt = (time.time() - t) / steps
  if not np.isfinite(float(m["loss"])):
    raise FloatingPointError(f"non-finite loss in the timed steps of {p['name']}")
  views = p["step"].views
  return {"images_per_sec": p["batch"] * views / dt, "step_seconds": dt,
          "compile_seconds": p["compile_seconds"], "flops_per_step": p["flops_per_step"],
          "views": views}


def is_oom(e: Exception) -> bool:
  text = str(e).lower()
  return "resource_exhausted" in text or "out of memory" in text or "oom" in text


def largest_batch(prepared: list[dict], start: int) -> int:
  """The largest global batch among ``start`` and the prepared doublings (in order) whose
  step compiled and ran; the first out-of-memory ends the search."""
  best = start
  for p in prepared:
    try:
      time_step(p, 1)
      best = p["batch"]
    except Exception as e:   # noqa: BLE001 - only out-of-memory ends the search quietly
      if not is_oom(e):
        raise
      break
    finally:
      p.clear()   # its programs go; its state and batch left the device with time_step
  return best


def auto_kernels(devices) -> str:
  return "cpu" if devices[0].platform == "cpu" else "xla"


def case_jobs(a, devices) -> dict:
  """(case index, kernels or "x2^k") -> (config, global batch) of every step to compile."""
  n, auto = len(devices), auto_kernels(devices)
  jobs = {}
  for i, (name, spec, dtype, per_device, global_batch) in enumerate(CASES):
    # --tiny: the kernel comparison and the batch search run on the first case only (the same
    # functions; each further compilation of a whole step costs a CPU many seconds).
    full = not a.tiny or i == 0
    batch = 8 * n if a.tiny else (per_device * n if per_device else global_batch)
    for kernels in (("xla", "cpu") if full else (auto,)):
      jobs[i, kernels] = (case_config(spec, dtype, kernels, a.tiny), batch)
    for k in range(1, a.max_doublings + 1 if full else 1):
      jobs[i, f"x{2**k}"] = (case_config(spec, dtype, auto, a.tiny), batch * 2**k)
  return jobs


def prepare_cases(jobs: dict, devices, pool) -> Callable[[], dict]:
  """Submit every job's compilation to ``pool``; a function that waits for them and returns
  the prepared steps, one initialisation compiled per case (``share_init``)."""
  auto = auto_kernels(devices)
  futures = {key: pool.submit(prepare, *job, key[1] == auto) for key, job in jobs.items()}

  def result() -> dict:
    prepared = {key: f.result() for key, f in futures.items()}
    for i in range(len(CASES)):
      share_init(prepared[i, auto], [p for key, p in prepared.items()
                                     if key[0] == i and key[1] != auto])
    return prepared
  return result


def time_cases(a, devices, jobs: dict, prepared: dict) -> list[dict]:
  """Time the prepared steps one at a time: a row per case."""
  n, dev, auto = len(devices), devices[0], auto_kernels(devices)
  peak = peak_flops(dev)
  rows = []
  for i, (name, spec, dtype, per_device, global_batch) in enumerate(CASES):
    batch = jobs[i, auto][1]
    row = {"case": name, "config": spec, "dtype": dtype, "global_batch": batch,
           "per_device_batch": batch // n}
    for kernels in ("xla", "cpu"):
      if (i, kernels) not in prepared:
        row[f"images_per_sec_{kernels}"] = None
        continue
      r = time_step(prepared.pop((i, kernels)), a.steps)
      row[f"images_per_sec_{kernels}"] = r["images_per_sec"]
      if kernels == auto:
        row.update(r)
        row["peak_memory_bytes"] = peak_memory(dev)
        row["mfu"] = (r["flops_per_step"] / r["step_seconds"] / (n * peak)) if peak else None
    row["kernels_auto"] = auto
    doublings = [prepared.pop(key) for key in sorted(
        (key for key in prepared if key[0] == i), key=lambda key: int(key[1][1:]))]
    row["largest_per_device_batch"] = (largest_batch(doublings, batch) // n
                                       if (not a.tiny or i == 0) else None)
    rows.append(row)
    print(f"# {name}: {row['images_per_sec']:.1f} img/s", flush=True)
  return rows


def load_cifar(path: str | None, tiny: bool, side: int):
  """(train images, labels, test images, labels, source) as uint8 / int32 numpy arrays."""
  n_train, n_test = (TINY_RUN["train"], TINY_RUN["test"]) if tiny else (None, None)
  if path and os.path.exists(path):
    cfg = configlib.base().data
    cfg.path = path
    tr = sources.load_split(cfg, "train", n_train, True, side)
    te = sources.load_split(cfg, "test", n_test, True, side)
    return tr.images, tr.labels, te.images, te.labels, os.path.abspath(path)
  rng = np.random.default_rng(0)
  n_train, n_test = n_train or 50_000, n_test or 10_000
  make = lambda n: (rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.int32))
  return (*make(n_train), *make(n_test), "synthetic")


def prepare_run(a) -> dict:
  """The MEC CIFAR-10 run's images loaded and its programs compiled (step, initialisation,
  batch gather, encoder), so that its timings, like the steps', share the machine with no
  compilation."""
  config = configlib.load("configs/mec_cifar10.py" + (":smoke" if a.tiny else ""))
  config.model.dtype = a.run_dtype
  if a.tiny:
    config.model.width, config.data.image_size = TINY_WIDTH, TINY_RUN["side"]
    config.model.stage_sizes = TINY_STAGES
  batch = TINY_RUN["batch"] if a.tiny else config.batch_size
  side = config.data.image_size
  t0 = time.time()
  x_tr, y_tr, x_te, y_te, origin = load_cifar(a.data, a.tiny, side)
  load_s = time.time() - t0
  t0 = time.time()
  mesh = parallel.make_mesh()
  repl, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  s = lowering.build_step(config, batch, mesh=mesh, steps_per_epoch=len(x_tr) // batch)
  sds = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl)

  def gather(images, labels, step):   # a shuffled batch, drawn on the device
    idx = jax.random.choice(jax.random.fold_in(jax.random.key(1), step), images.shape[0],
                            (batch,), replace=False)
    return jax.lax.with_sharding_constraint(
        {"image": images[idx], "label": labels[idx], "index": idx.astype(jnp.int32)}, rows)

  eb = 256   # the encoder's batch: every chunk is padded to it, one program for all

  def encode(params, model_state, x):
    return s.method.encode(params, model_state, s.recipe.eval_view(x))

  chunk = jax.ShapeDtypeStruct((eb,) + x_tr.shape[1:], x_tr.dtype, sharding=repl)
  programs = {
      "init": lowering.compile_init(s, config.seed),
      "step": s.step.lower(s.state, s.batch).compile(),
      "gather": jax.jit(gather).lower(sds(x_tr), sds(y_tr), jnp.int32(0)).compile(),
      "encode": jax.jit(encode).lower(s.state.params, s.state.model_state, chunk).compile()}
  return {"config": config, "batch": batch, "views": s.views, "data": (x_tr, y_tr, x_te, y_te),
          "origin": origin, "load_seconds": load_s, "compile_seconds": time.time() - t0,
          "repl": repl, "eb": eb, **programs}


def training_run(a, r: dict) -> dict:
  """MEC on CIFAR-10 from ``prepare_run``, data in device memory, then kNN; times from the
  first step."""
  config, batch, repl, eb = r["config"], r["batch"], r["repl"], r["eb"]
  x_tr, y_tr, x_te, y_te = r["data"]
  images, labels = jax.device_put(x_tr, repl), jax.device_put(y_tr, repl)
  state = r["init"]()
  jax.block_until_ready(state)
  t1 = time.time()
  for i in range(a.run_steps):
    state, m = r["step"](state, r["gather"](images, labels, jnp.int32(i)))
    if i == 0:
      jax.block_until_ready(m)
      first = time.time() - t1
  jax.block_until_ready(m)
  train_s = time.time() - t1

  def features(x):
    out = []
    for i in range(0, len(x), eb):
      chunk = x[i:i + eb]
      pad = np.zeros((eb - len(chunk),) + chunk.shape[1:], chunk.dtype)
      out.append(r["encode"](state.params, state.model_state,
                             jax.device_put(np.concatenate([chunk, pad]), repl))[:len(chunk)])
    return jnp.concatenate(out)

  bank, queries = features(x_tr), features(x_te)
  knn = float(evaluators.knn_top1(
      bank, jnp.asarray(y_tr), jnp.ones(len(y_tr), bool), queries, jnp.asarray(y_te),
      jnp.ones(len(y_te), bool), num_classes=10, k=config.knn.k,
      temperature=config.knn.temperature))
  total = time.time() - t1
  return {"data": r["origin"], "train_images": int(len(x_tr)), "test_images": int(len(x_te)),
          "global_batch": batch, "steps": a.run_steps, "dtype": a.run_dtype,
          "load_seconds": r["load_seconds"], "compile_seconds": r["compile_seconds"],
          "first_step_seconds": first, "train_seconds": train_s,
          "images_per_sec": (a.run_steps - 1) * batch * r["views"] / max(train_s - first, 1e-9)
          if a.run_steps > 1 else None,
          "knn_top1": knn, "seconds_to_knn": total, "final_loss": float(m["loss"])}


def markdown(result: dict) -> str:
  lines = ["| case | global batch | img/s (views) | kernels cpu / xla img/s | peak memory GiB | "
           "MFU | largest batch / device | compile s |", "|---" * 8 + "|"]
  for r in result["steps"]:
    mem = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r["peak_memory_bytes"] else "-"
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    ips = lambda k: "-" if r[f"images_per_sec_{k}"] is None else f"{r[f'images_per_sec_{k}']:.1f}"
    largest = "-" if r["largest_per_device_batch"] is None else r["largest_per_device_batch"]
    lines.append(f"| {r['case']} | {r['global_batch']} | {r['images_per_sec']:.1f} | "
                 f"{ips('cpu')} / {ips('xla')} | {mem} | "
                 f"{mfu} | {largest} | {r['compile_seconds']:.0f} |")
  run = result["run"]
  lines.append("")
  lines.append(f"MEC CIFAR-10 run ({run['data']}): {run['steps']} steps of {run['global_batch']}"
               f", {run['dtype']}: kNN top-1 {run['knn_top1']:.4f} after "
               f"{run['seconds_to_knn']:.0f}s (first step {run['first_step_seconds']:.1f}s; images "
               f"loaded in {run['load_seconds']:.0f}s, programs compiled in "
               f"{run['compile_seconds']:.0f}s before it)")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="runs/bench_accelerator")
  p.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 archive (synthetic if absent)")
  p.add_argument("--tiny", action="store_true", help="tiny sizes: the code paths on a CPU")
  p.add_argument("--steps", type=int, default=None, help="timed steps per case")
  p.add_argument("--max-doublings", type=int, default=None)
  p.add_argument("--run-steps", type=int, default=None, help="steps of the CIFAR-10 run")
  p.add_argument("--run-dtype", default="bfloat16")
  p.add_argument("--compile-threads", type=int, default=min(4, os.cpu_count() or 1),
                 help="steps compiled at once before any is timed")
  a = p.parse_args()
  a.steps = a.steps or (1 if a.tiny else 10)
  a.max_doublings = a.max_doublings if a.max_doublings is not None else (1 if a.tiny else 3)
  a.run_steps = a.run_steps or (2 if a.tiny else 500)
  devices = jax.devices()
  t = time.time()
  result = {"date": time.strftime("%Y-%m-%d"), "backend": jax.default_backend(),
            "device_kind": devices[0].device_kind, "devices": len(devices),
            "host": platform.processor() or platform.machine(), "jax": jax.__version__,
            "tiny": a.tiny, "peak_flops_per_device": peak_flops(devices[0])}
  jobs = case_jobs(a, devices)
  with concurrent.futures.ThreadPoolExecutor(a.compile_threads) as pool:
    run = pool.submit(prepare_run, a)   # the longest job first
    cases = prepare_cases(jobs, devices, pool)
    prepared, run = cases(), run.result()
  result["steps"] = time_cases(a, devices, jobs, prepared)
  result["run"] = training_run(a, run)
  result["seconds"] = time.time() - t
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, "bench_accelerator.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(markdown(result))
  print(f"\nwrote {os.path.join(a.out, 'bench_accelerator.json')} ({result['seconds']:.0f}s)")


if __name__ == "__main__":
  main()
