"""Two-view augmentation throughput, in images per second (each image yields two views).

- ``cifar`` recipe at 32 px: crops, flips, jitter, grayscale, solarize, all on the device
  (jitted, batch 256), from uint8 images;
- ``mocov3`` recipe at 224 px: the host part (decode a ~500x375 JPEG, two random-resized
  crops + flips with PIL, per image, one thread) and the device part (jitter, grayscale,
  blur, solarize on the two 224 crops, batch 64).

  python benchmarks/bench_augment.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from mecjax import configlib  # noqa: E402
from mecjax.data import augment, sources  # noqa: E402
import timing  # noqa: E402


def aug_cfg(**kw):
  c = ml_collections.ConfigDict(configlib.base().aug.to_dict())
  c.update(kw)
  return c


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args()
  print(timing.machine_line())
  rng = np.random.default_rng(0)
  key = jax.random.key(0)

  cifar = augment.get_recipe(aug_cfg(), 32, 0)
  small = jnp.asarray(rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8))
  f_small = jax.jit(lambda x, i, s: cifar.views(x, i, s, key))
  idx = jnp.arange(256)

  moco = augment.get_recipe(aug_cfg(name="mocov3", blur_prob=(1.0, 0.1),
                                    solarize_prob=(0.0, 0.2)), 224, 0)
  crops = jnp.asarray(rng.integers(0, 256, (64, 2, 224, 224, 3), dtype=np.uint8))
  f_big = jax.jit(lambda x, i, s: moco.views(x, i, s, key))
  idx64 = jnp.arange(64)

  times = timing.interleaved({"cifar": lambda: f_small(small, idx, 0),
                              "mocov3_device": lambda: f_big(crops, idx64, 0)},
                             rounds=args.rounds, reps=3)
  print(f"cifar recipe, device (32 px, batch 256): "
        f"{256 / timing.median(times['cifar']):.0f} images/s")
  print(f"mocov3 recipe, device part (2 x 224 px, batch 64): "
        f"{64 / timing.median(times['mocov3_device']):.0f} images/s")

  photo = np.clip(rng.normal(128, 60, (375, 500, 3)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(photo).save(buf, format="JPEG", quality=90)
  jpeg = buf.getvalue()
  host = moco.host_transform()
  n, t = 0, time.perf_counter()
  while time.perf_counter() - t < 5.0:
    host({"image": sources.decode_rgb(jpeg), "label": 0, "index": n}, 0)
    n += 1
  print(f"mocov3 recipe, host part (decode 500x375 JPEG + 2 crops, 1 thread): "
        f"{n / (time.perf_counter() - t):.0f} images/s")


if __name__ == "__main__":
  main()
