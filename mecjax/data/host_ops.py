"""Host-side image ops for large images: random-resized crop + flip, resize + centre crop.

Crops of large images are taken on the host (from the decoded image, before any resize) so
that only the crop travels to the device. The random draws come from
``numpy.random.default_rng([seed, step, index])``: a function of the seed, the global step
and the sample's index, never of the device or process count, or of a resume.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def sample_crop(rng: np.random.Generator, height: int, width: int,
                scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(image: np.ndarray, rng: np.random.Generator, size: int,
                             scale) -> np.ndarray:
  top, left, h, w = sample_crop(rng, image.shape[0], image.shape[1], scale)
  crop = Image.fromarray(image).resize((size, size), Image.BILINEAR,
                                       box=(left, top, left + w, top + h))
  out = np.asarray(crop)
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return out


def resize_center_crop(image: np.ndarray, size: int, resize: int | None = None) -> np.ndarray:
  """Resize the shorter side to ``resize`` (default ``size * 256 / 224``), crop the centre."""
  resize = resize or int(round(size * 256 / 224))
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  if h <= w:
    nh, nw = resize, max(int(resize * w / h), resize)
  else:
    nw, nh = resize, max(int(resize * h / w), resize)
  im = Image.fromarray(image).resize((nw, nh), Image.BILINEAR)
  top, left = (nh - size) // 2, (nw - size) // 2
  return np.asarray(im)[top:top + size, left:left + size]
