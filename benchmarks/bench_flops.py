"""FLOPs of each method's whole train step and the throughput they imply on accelerators.

The step is the loop's (``mecjax.lowering.build_step``: augmentation, forward, loss,
backward, optimiser, EMA teacher, online probe, monitors) at the recipes' real sizes: every
method's CIFAR-10 config (CIFAR ResNet-18 at full width, batch 512) and MEC's ImageNet
configs (ResNet-50 and ViT-S/16 at 224, batch 256). FLOPs come from XLA's cost analysis of
the step lowered for cuda (the unoptimised module, before fusion; no GPU needed). The
images/s are ideals at a given fraction of each chip's dense bfloat16 peak (MFU), not
measurements: ``peak x MFU / (FLOPs per view)``, views counted as the loop counts them.

  python benchmarks/bench_flops.py [--mfu 0.4] [--methods mec,simclr] [--no-imagenet]
"""

from __future__ import annotations

import argparse
import time

from mecjax import configlib, lowering

# Dense bfloat16 peaks, FLOP/s (vendor figures).
PEAKS = {"H100 SXM": 989e12, "TPU v5e": 197e12}
CIFAR = {"mec": "mec_cifar10", "music": "music_cifar10", "simsiam": "simsiam_cifar10",
         "byol": "byol_cifar10", "barlow_twins": "barlow_twins_cifar10",
         "vicreg": "vicreg_cifar10", "swav": "swav_cifar10", "simclr": "simclr_cifar10"}
IMAGENET = {"mec ResNet-50": ("mec_imagenet", None), "mec ViT-S/16": ("mec_imagenet_vit",
                                                                      "vit_s")}


def measure(spec: str, batch: int) -> dict:
  config = configlib.load(spec)
  config.model.dtype = "bfloat16"
  step = lowering.build_step(config, batch)
  flops = lowering.flops(step, "cuda")
  views = batch * step.views
  return {"config": spec, "encoder": config.model.name, "side": config.data.image_size,
          "batch": batch, "views": views, "flops": flops, "flops_per_view": flops / views}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--mfu", type=float, default=0.4)
  p.add_argument("--methods", default=",".join(CIFAR))
  p.add_argument("--no-imagenet", action="store_true")
  a = p.parse_args()
  rows = []
  for m in a.methods.split(","):
    t = time.time()
    rows.append((m, measure(f"configs/{CIFAR[m]}.py", 512)))
    print(f"# {m}: {time.time() - t:.0f}s", flush=True)
  if not a.no_imagenet:
    for name, (file, variant) in IMAGENET.items():
      rows.append((name, measure(f"configs/{file}.py" + (f":{variant}" if variant else ""),
                                 256)))
  heads = " | ".join(f"{k} img/s at {a.mfu:.0%} MFU" for k in PEAKS)
  print(f"\n| step | encoder | px | batch (views) | TFLOP / step | GFLOP / view | {heads} |")
  print("|---" * (6 + len(PEAKS)) + "|")
  for name, r in rows:
    ideal = " | ".join(f"{peak * a.mfu / r['flops_per_view']:,.0f}" for peak in PEAKS.values())
    print(f"| {name} | {r['encoder']} | {r['side']} | {r['batch']} ({r['views']}) | "
          f"{r['flops'] / 1e12:.2f} | {r['flops_per_view'] / 1e9:.2f} | {ideal} |")


if __name__ == "__main__":
  main()
