"""Host input cost at ImageNet scale: decode + RandomResizedCrops per image, and images/s
of the training input with 1 and 2 host worker processes.

Writes a synthetic ImageNet-like JPEG folder (``<out>/train/<class>/<i>.jpg``, quality 90,
sides 500x375 scaled by a log-uniform factor in [0.7, 1.5], one in five portrait; smooth
random content plus noise, so the files are about ImageNet's size), and 8 images with x3
sides (ImageNet's tail of large photos), and measures:

- ms of one core per image (process CPU time, single thread) for: the old path (full decode
  to an array, then crops from it), decode + 2 x 224 RandomResizedCrop (scale (0.08, 1)), and
  + 6 x 96 local crops (scale (0.05, 0.4)), each with and without PIL ``draft`` (DCT-domain
  downscaling), with the pixel difference ``draft`` makes (mean / max abs, 0-255 levels,
  over the crops of the images it applies to) and how many images it applies to;
- images/s of ``TrainInput`` (encoded source, MoCo v3 host crops, batch 32, 1 thread per
  worker) with 0 (in-process), 1 and 2 worker processes, after two warm-up batches per worker, best of 2;
- the cores the machine gives two busy processes just then (on a shared machine, the
  ceiling of any 2-worker speed-up), and the cores the input's processes used;
- "cores per 1,000 images/s" = the one-core ms per image (1,000 images/s x t ms = t cores).

Usage: python benchmarks/bench_host_input.py [--images N] [--out DIR] [--batches B]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import tempfile
import time

import numpy as np
from PIL import Image

from mecjax.data import host_ops, pipeline, sources

GLOBAL = [(224, (0.08, 1.0))] * 2
LOCAL = [(96, (0.05, 0.4))] * 6


def write_folder(out: str, n: int, seed: int = 0, scale: float = 1.0) -> list[str]:
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    f = scale * float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
    w, h = int(round(500 * f)), int(round(375 * f))
    if rng.random() < 0.2:
      w, h = h, w
    low = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    im = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float32)
    im = np.clip(im + rng.normal(0, 12, im.shape), 0, 255).astype(np.uint8)
    folder = os.path.join(out, "train", f"c{i % 4}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{i:05d}.jpg")
    Image.fromarray(im).save(path, quality=90)
    paths.append(path)
  return paths


def cpu_ms(fn, blobs, repeats: int = 1) -> float:
  t0 = time.process_time()
  for _ in range(repeats):
    for k, data in enumerate(blobs):
      fn(data, np.random.default_rng([0, k]))
  return (time.process_time() - t0) * 1e3 / (repeats * len(blobs))


def old_path(specs):
  def fn(data, rng):
    image = sources.decode_rgb(data)
    return [host_ops.random_resized_crop_flip(image, rng, s, sc) for s, sc in specs]
  return fn


def new_path(specs, draft):
  return lambda data, rng: host_ops.crops_from_encoded(data, rng, specs, draft)


def draft_difference(blobs, specs):
  """(mean abs, max abs, images drafted) of draft vs full decode, on the drafted images."""
  diffs, drafted = [], 0
  for k, data in enumerate(blobs):
    with Image.open(io.BytesIO(data)) as im:
      width, height = im.size
    rng = np.random.default_rng([0, k])
    boxes = [(host_ops.draw_crop(rng, height, width, sc)[0], s) for s, sc in specs]
    if host_ops.draft_factor(boxes) == 1:
      continue
    drafted += 1
    a = host_ops.crops_from_encoded(data, np.random.default_rng([0, k]), specs, True)
    b = host_ops.crops_from_encoded(data, np.random.default_rng([0, k]), specs, False)
    diffs += [np.abs(x.astype(np.int16) - y.astype(np.int16)).ravel() for x, y in zip(a, b)]
  if not diffs:
    return 0.0, 0, 0
  d = np.concatenate(diffs)
  return float(d.mean()), int(d.max()), drafted


def images_per_s(folder: str, workers: int, batches: int, batch: int = 32) -> float:
  from mecjax.configlib import base
  from mecjax.data import augment
  cfg = base().aug
  cfg.name = "mocov3"
  recipe = augment.get_recipe(cfg, 224, 0)
  images = sources.LocalImages(folder)
  index = images.split("train")
  src = sources.EncodedSource(images, index, np.arange(len(index.names)))
  it = pipeline.TrainInput(src, global_batch=batch, seed=0, mesh=None,
                           total_steps=batches + 2 * workers + 1,
                           host_transform=recipe.host_transform(), threads=1, prefetch=2,
                           rows=(0, batch), workers=workers)
  # Warm-up: two batches from every worker, so that each has started (a spawned worker
  # imports the package first, seconds on a loaded machine) before the clock starts.
  for _ in range(max(1, 2 * workers)):
    it.next_local()
  pids = [q.pid for q in multiprocessing.active_children()] + [os.getpid()]
  c0 = sum(_cpu_s(q) for q in pids)
  t0 = time.perf_counter()
  for _ in range(batches):
    it.next_local()
  wall = time.perf_counter() - t0
  cores = (sum(_cpu_s(q) for q in pids) - c0) / wall
  it.close()
  return batches * batch / wall, cores


def _cpu_s(pid: int) -> float:
  """User + system CPU seconds of a process so far (Linux /proc)."""
  fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spin(seconds: float) -> float:
  t0, c0 = time.perf_counter(), time.process_time()
  while time.perf_counter() - t0 < seconds:
    pass
  return time.process_time() - c0


def cores_available(n: int = 2, seconds: float = 2.0) -> float:
  """Cores ``n`` busy processes get now: the ceiling of any n-worker speed-up here."""
  with multiprocessing.get_context("spawn").Pool(n) as pool:
    return sum(pool.map(_spin, [seconds] * n)) / seconds


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=96)
  p.add_argument("--out", default=None, help="folder for the synthetic JPEGs (default: temp)")
  p.add_argument("--batches", type=int, default=6, help="timed batches of 32 per worker count")
  args = p.parse_args()
  out = args.out or tempfile.mkdtemp(prefix="host_input_")
  paths = write_folder(out, args.images)
  blobs = [open(q, "rb").read() for q in paths]
  sizes = np.array([Image.open(q).size for q in paths])
  print(f"{len(paths)} JPEGs in {out}: mean {sizes[:, 0].mean():.0f}x{sizes[:, 1].mean():.0f}, "
        f"{np.mean([len(b) for b in blobs]) / 1024:.0f} KiB mean, quality 90")
  with os.popen("uptime") as f:
    print("load:", f.read().strip())

  print("\nms of one core per image (CPU time, one thread):")
  decode_only = cpu_ms(lambda d, r: sources.decode_rgb(d), blobs)
  print(f"  decode only (full, to an array)            {decode_only:6.2f}")
  rows = {}
  for name, specs in (("decode + 2 RRC", GLOBAL), ("decode + 2 RRC + 6 local", GLOBAL + LOCAL)):
    rows[name] = {
        "old": cpu_ms(old_path(specs), blobs),
        "no draft": cpu_ms(new_path(specs, False), blobs),
        "draft": cpu_ms(new_path(specs, True), blobs)}
    r = rows[name]
    print(f"  {name:26s} old path {r['old']:6.2f}   from bytes, no draft {r['no draft']:6.2f}"
          f"   draft {r['draft']:6.2f}")
  for name, specs in (("2 RRC", GLOBAL), ("2 RRC + 6 local", GLOBAL + LOCAL)):
    mean, mx, n = draft_difference(blobs, specs)
    print(f"  draft pixel difference, {name}: applies to {n}/{len(blobs)} images; "
          f"mean abs {mean:.2f}, max abs {mx} (of 255) on their crops")

  # ImageNet's long tail of large photos: where draft applies. Sides x3 (~1600x1300).
  large = [open(q, "rb").read() for q in write_folder(os.path.join(out, "large"), 8, 1, 3.0)]
  print("  large images (sides x3, 8 images):")
  for name, specs in (("decode + 2 RRC", GLOBAL), ("decode + 2 RRC + 6 local", GLOBAL + LOCAL)):
    full, drafted = cpu_ms(new_path(specs, False), large), cpu_ms(new_path(specs, True), large)
    mean, mx, n = draft_difference(large, specs)
    print(f"    {name:26s} no draft {full:6.2f}   draft {drafted:6.2f}   (applies to "
          f"{n}/{len(large)}; mean abs {mean:.2f}, max abs {mx})")

  print("\nimages/s of TrainInput (decode + 2 RRC, draft), batch 32, 1 thread per worker:")
  print(f"  2 busy processes get {cores_available():.2f} cores of this machine now")
  rates = {}
  for w in (0, 1, 2):   # best of 2
    rates[w] = max(images_per_s(out, w, args.batches), images_per_s(out, w, args.batches))
    r, cores = rates[w]
    print(f"  host_workers={w}{' (in-process)' if w == 0 else ''}: {r:7.1f} images/s, "
          f"{cores:.2f} cores busy, {r / max(cores, 1e-9):6.1f} images per CPU-second")
  print(f"  2 workers / 1 worker: {rates[2][0] / rates[1][0]:.2f}x")
  print(f"  2 busy processes get {cores_available():.2f} cores of this machine now")
  with os.popen("uptime") as f:
    print("load:", f.read().strip())

  print("\ncores per 1,000 images/s (= one-core ms per image):")
  for name, r in rows.items():
    print(f"  {name:26s} {r['draft']:5.2f} (draft)   {r['no draft']:5.2f} (no draft)")


if __name__ == "__main__":
  main()
