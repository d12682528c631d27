"""Host-side image ops for large images: random-resized crop + flip, resize + centre crop.

Crops of large images are taken on the host (from the decoded image, before any resize) so
that only the crop travels to the device. The random draws come from
``numpy.random.default_rng([seed, step, index])``: a function of the seed, the global step
and the sample's index, never of the device or process count, or of a resume.

``crops_from_encoded`` takes the same crops from the encoded file: the crop boxes are drawn
from the image's header size before any pixel is decoded (the draws do not depend on pixels),
so the JPEG can be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (PIL's ``draft``)
when every crop is still at least its output side at that scale. Without ``draft`` it gives
the pixels of ``random_resized_crop_flip`` on the fully decoded image, bit for bit; with it,
only images whose every crop is >= 2x its output side change. Measured on synthetic JPEGs
(``benchmarks/bench_host_input.py``, quality 90, vs full decode then resize, 0-255 levels):
at ImageNet's usual ~500x375 it applies to ~1 image in 64 with two 224 crops (both crops
need a side >= 448), mean abs 1.4, max 9; on the tail of large photos (~1600x1300) to half
the images, mean abs 2.9, max abs 53-60 (at sharp edges), and decode + 2 crops costs 30%
less (+ 6 local crops: 38% less).
"""

from __future__ import annotations

import io
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
  box, flip = draw_crop(rng, image.shape[0], image.shape[1], scale)
  return _crop(Image.fromarray(image), box, flip, size, (1.0, 1.0))


def draw_crop(rng: np.random.Generator, height: int, width: int, scale):
  """One crop's draws, in the order ``random_resized_crop_flip`` makes them: box, flip."""
  box = sample_crop(rng, height, width, scale)
  return box, bool(rng.random() < 0.5)


def _crop(im: Image.Image, box, flip: bool, size: int, factor) -> np.ndarray:
  """Resize ``box`` (full-resolution (top, left, h, w)) of ``im``, the image decoded at
  ``factor = (fx, fy)`` of its full size, to ``size`` x ``size``; flip it if asked."""
  top, left, h, w = box
  fx, fy = factor
  out = np.asarray(im.resize((size, size), Image.BILINEAR,
                             box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy)))
  return out[:, ::-1] if flip else out


def draft_factor(boxes_and_sizes, limit: int = 8) -> int:
  """The largest JPEG DCT reduction (1, 2, 4 or 8) leaving every crop box at least its
  output side: ``boxes_and_sizes`` = [((top, left, h, w), size), ...]."""
  reduce = limit
  while reduce > 1 and any(min(box[2], box[3]) < reduce * size
                           for box, size in boxes_and_sizes):
    reduce //= 2
  return reduce


def crops_from_encoded(data: bytes, rng: np.random.Generator, specs, draft: bool = True
                       ) -> list[np.ndarray]:
  """The random-resized crops + flips ``specs = [(size, scale), ...]`` of an encoded image,
  drawn as ``random_resized_crop_flip`` draws them (same generator order, same boxes).

  ``draft``: decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) at which every crop box
  still has at least its output side, then resize from there (libjpeg's scaled IDCT replaces
  part of the bilinear downscaling: pixel values change, by the amounts in the module docstring). Other formats,
  and JPEGs with a crop too small to allow a reduction, decode at full size.
  """
  with Image.open(io.BytesIO(data)) as im:
    width, height = im.size
    draws = [(draw_crop(rng, height, width, scale), size) for size, scale in specs]
    if draft and im.format == "JPEG":
      reduce = draft_factor([(box, size) for (box, _), size in draws])
      if reduce > 1:
        im.draft("RGB", (max(width // reduce, 1), max(height // reduce, 1)))
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    rgb.load()
    factor = (rgb.size[0] / width, rgb.size[1] / height)   # the decoder's actual scale
    return [_crop(rgb, box, flip, size, factor) for (box, flip), size in draws]


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
