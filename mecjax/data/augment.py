"""Device-side view augmentation, inside the jitted train step (dm-pix colour ops).

Every random draw is a function of ``(seed, step, sample index)``: the key of sample ``i``
at step ``s`` is ``fold_in(fold_in(key(seed), s), i)`` (the run's key is kept in the train
state), so views do not depend on the device
count, the process count or on a resume.

Op semantics follow torchvision, which the official recipes use: ``RandomResizedCrop``
(10 attempts, then a centre crop), ``ColorJitter`` (brightness/contrast/saturation as blends,
hue as an HSV shift, the four in a random order per image), ``RandomGrayscale`` (rec.601
luma in three channels), PIL's solarize (threshold 128 of 255), Gaussian blur with
sigma ~ U(0.1, 2).

Recipes (``config.aug.name``):
- ``cifar``: crops taken here from the whole decoded image (a 32x32 data set ships whole
  images, cheaply); no blur by default; solarize on view 2 only.
- ``mocov3``: crops and flips taken on the host from the full-size decoded image
  (``host_ops``), colour, blur and solarize here; view 1 blur p=1, view 2 blur p=0.1 and
  solarize p=0.2 (MoCo v3 / official MEC).

Multi-crop (``aug.num_local > 0``, SwAV): ``views`` returns the ``aug.num_global_views``
global views (``data.image_size`` square, crop scale ``aug.crop_scale``) followed by
``num_local`` local views (``aug.local_size`` square, crop scale ``aug.local_crop_scale``, the
same jitter and grayscale, blur ``local_blur_prob``, solarize ``local_solarize_prob``). The
global views' draws are those of a run without local views: the locals take the keys after
them, so switching multi-crop on changes no global view.
"""

from __future__ import annotations

import math
from typing import Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from mecjax import configlib
from mecjax.configlib import ConfigError
from mecjax.data import host_ops

SOLARIZE_THRESHOLD = 128 / 255
LOCAL_STREAM = 0xFFFFFFFF   # fold_in data of the local views' key stream: no step number reaches it


# ----------------------------------------------------------------------- keys


def sample_keys(key: jax.Array, step, index: jax.Array, num: int) -> jax.Array:
  """(B, num) keys for ``num`` independent draws of each sample at ``step``; ``key`` is the
  run's key (``jax.random.key(seed)``)."""
  step_key = jax.random.fold_in(key, step)
  keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(index)
  return jax.vmap(lambda k: jax.random.split(k, num))(keys)


# -------------------------------------------------------------- crop (device)


def crop_box(key, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision ``RandomResizedCrop.get_params`` with its 10 attempts drawn at once."""
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = height * width
  target = area * jax.random.uniform(k_area, (10,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(k_ratio, (10,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  w = jnp.round(jnp.sqrt(target * aspect))
  h = jnp.round(jnp.sqrt(target / aspect))
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(ok)
  # Fallback (all 10 attempts out of bounds): the centre crop with the ratio clamped.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fw, fh = width, round(width / ratio[0])
  elif in_ratio > ratio[1]:
    fw, fh = round(height * ratio[1]), height
  else:
    fw, fh = width, height
  h = jnp.where(ok.any(), h[first], fh)
  w = jnp.where(ok.any(), w[first], fw)
  top = jnp.floor(jax.random.uniform(k_top) * (height - h + 1))
  left = jnp.floor(jax.random.uniform(k_left) * (width - w + 1))
  top = jnp.where(ok.any(), top, (height - h) // 2)
  left = jnp.where(ok.any(), left, (width - w) // 2)
  return top, left, h, w


def crop_resize(image: jax.Array, box, size: int) -> jax.Array:
  """Crop ``box = (top, left, h, w)`` of one HxWxC float image and resize it (bilinear,
  antialiased when shrinking, as PIL) to ``size x size``."""
  top, left, h, w = box
  scale = jnp.stack([size / h, size / w])
  translation = -jnp.stack([top, left]) * scale
  return jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1), scale,
                                       translation, method="linear", antialias=True)


# --------------------------------------------------------------- colour ops


def _gray(x):
  return pix.rgb_to_grayscale(x, keep_dims=True)


def _blend(a, b, factor):
  return jnp.clip(factor * a + (1 - factor) * b, 0.0, 1.0)


def _brightness(x, f):
  return jnp.clip(x * f[:, None, None, None], 0.0, 1.0)


def _contrast(x, f):
  mean = jnp.mean(_gray(x), axis=(1, 2, 3), keepdims=True)
  return _blend(x, mean, f[:, None, None, None])


def _saturation(x, f):
  return _blend(x, _gray(x), f[:, None, None, None])


def _hue(x, delta):
  hsv = pix.rgb_to_hsv(x)
  hue = jnp.mod(hsv[..., 0] + delta[:, None, None], 1.0)
  return jnp.clip(pix.hsv_to_rgb(jnp.stack([hue, hsv[..., 1], hsv[..., 2]], -1)), 0.0, 1.0)


def color_jitter(keys, x, strength: Sequence[float], prob: float):
  """torchvision ``RandomApply([ColorJitter(*strength)], p=prob)`` on a (B,H,W,3) batch.

  The four adjustments run in a random order per image. Brightness, contrast and
  saturation are all blends ``clip(f x + (1 - f) target)`` (target 0, the mean grey level,
  the grey image), so the order is evaluated as: the blends placed before the hue shift,
  the hue shift once, the blends placed after it; each position is one fused blend with a
  per-image factor and target. An image the coin skips is returned unchanged.
  """
  b, c, s, h = strength

  def draws(key):
    kb, kc, ks, kh, kp, kapply = jax.random.split(key, 6)
    f = jnp.stack([
        jax.random.uniform(kb, minval=max(0.0, 1 - b), maxval=1 + b),
        jax.random.uniform(kc, minval=max(0.0, 1 - c), maxval=1 + c),
        jax.random.uniform(ks, minval=max(0.0, 1 - s), maxval=1 + s),
        jax.random.uniform(kh, minval=-h, maxval=h)])
    return f, jax.random.permutation(kp, 4), jax.random.bernoulli(kapply, prob)

  factors, order, apply = jax.vmap(draws)(keys)
  hue_at = jnp.argmax(order == 3, axis=1)            # position of the hue shift
  col = lambda v: v[:, None, None, None]

  def blend_at(y, position, active):
    op = order[:, position]
    f = jnp.where(active & (op < 3), jnp.take_along_axis(factors, op[:, None], 1)[:, 0], 1.0)
    gray = _gray(y)
    mean = jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
    target = jnp.where(col(op == 0), 0.0, jnp.where(col(op == 1), mean, gray))
    return jnp.clip(col(f) * y + (1 - col(f)) * target, 0.0, 1.0)

  y = x
  for position in range(3):
    y = blend_at(y, position, position < hue_at)
  y = _hue(y, jnp.where(apply, factors[:, 3], 0.0))
  for position in range(1, 4):
    y = blend_at(y, position, position > hue_at)
  return jnp.where(col(apply), y, x)


def _coin(keys, prob):
  return jax.vmap(lambda k: jax.random.bernoulli(k, prob))(keys)[:, None, None, None]


def random_grayscale(keys, x, prob: float):
  return jnp.where(_coin(keys, prob), jnp.broadcast_to(_gray(x), x.shape), x)


def random_solarize(keys, x, prob: float):
  return jnp.where(_coin(keys, prob), pix.solarize(x, SOLARIZE_THRESHOLD), x)


def _clamped_shifts(size: int, radius: int) -> np.ndarray:
  """(2r+1, size, size) matrices P_o with P_o[i, clamp(i + o)] = 1: a shift by o whose
  out-of-range taps fall on the edge pixel (PIL's blur extends the edges)."""
  out = np.zeros((2 * radius + 1, size, size), np.float32)
  rows = np.arange(size)
  for k, o in enumerate(range(-radius, radius + 1)):
    out[k, rows, np.clip(rows + o, 0, size - 1)] = 1.0
  return out


def random_blur(keys, x, prob: float, sigma=(0.1, 2.0)):
  """``RandomApply([GaussianBlur(sigma ~ U(0.1, 2))], p=prob)`` on a (B,H,W,C) batch.

  Separable Gaussian (taps to 3 sigma_max, edges extended as PIL does), applied as two
  batched matrix products with per-image (H,H) and (W,W) blur matrices: on CPU several
  times faster than per-image convolution kernels, and one fused matmul on accelerators.
  """
  radius = math.ceil(3 * sigma[1])
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)

  def draws(key):
    k_sigma, k_apply = jax.random.split(key)
    s = jax.random.uniform(k_sigma, minval=sigma[0], maxval=sigma[1])
    taps = jnp.exp(-0.5 * (offsets / s) ** 2)
    return taps / jnp.sum(taps), jax.random.bernoulli(k_apply, prob)

  taps, apply = jax.vmap(draws)(keys)
  height, width = x.shape[1:3]
  k_h = jnp.einsum("bo,oij->bij", taps, _clamped_shifts(height, radius))
  k_w = k_h if width == height else jnp.einsum("bo,oij->bij", taps,
                                               _clamped_shifts(width, radius))
  y = jnp.einsum("bij,bjwc->biwc", k_h, x)
  y = jnp.einsum("bkw,bhwc->bhkc", k_w, y)
  return jnp.where(apply[:, None, None, None], y, x)


def random_flip(keys, x):
  return jnp.where(_coin(keys, 0.5), x[:, :, ::-1], x)


def normalize(x, mean, std):
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


# ------------------------------------------------------------------- recipes


class Recipe:
  """Global views (two by default) and ``aug.num_local`` local views: a host part and a
  device part."""

  def __init__(self, cfg, image_size: int, seed: int):
    self.cfg, self.size, self.seed = cfg, image_size, seed
    self.num_global = configlib.global_views(cfg)   # aug.num_global_views, checked
    self.num_local = check_local_views(cfg, image_size)
    self.local_size = cfg.local_size if self.num_local else None
    self.num_views = self.num_global + self.num_local

  # Host side: None = ship the decoded image whole.
  def host_transform(self):
    return None

  def eval_transform(self):
    """Host transform of one eval image (decoded uint8) before it is batched."""
    size = self.size
    return lambda image: host_ops.resize_center_crop(image, size, resize=size) \
        if image.shape[:2] != (size, size) else image

  def crops(self, keys, local_keys, images, num_global: int | None = None):
    """float crops in [0, 1], stacked per view group: ``(global, local)`` with global
    (G, B, S, S, 3) and local (num_local, B, s, s, 3) or None; ``keys`` (B,) draw the global
    crops, ``local_keys`` (B, num_local) the local ones (None without local views). ``G`` is
    ``num_global`` when given (the first G global views: a vmapped program computes every
    view it is given, so a caller that needs fewer says so), else all of them."""
    raise NotImplementedError

  def _view_probs(self, v: int) -> tuple[float, float]:
    """(blur, solarize) probabilities of view ``v`` (globals first, then locals)."""
    cfg = self.cfg
    if v < self.num_global:
      return cfg.blur_prob[v], cfg.solarize_prob[v]
    return cfg.local_blur_prob, cfg.local_solarize_prob

  def views(self, images: jax.Array, index: jax.Array, step, key: jax.Array
            ) -> list[jax.Array]:
    """The augmented, normalised views of a uint8 batch, keyed by (key, step, index):
    ``num_global`` float32 (B,S,S,3) global views, then ``num_local`` (B,s,s,3) local ones.
    ``images`` is what the host shipped (``host_transform``): whole images, or crops."""
    cfg = self.cfg
    g, n_local = self.num_global, self.num_local
    # Five colour keys per global view and one crop key, as without local views; the local
    # views draw six each (five colour, one crop) from a stream of their own, so switching
    # them on leaves the global views as they were.
    keys = sample_keys(key, step, index, 5 * g + 1)
    b = keys.shape[0]
    by_view = lambda k, n, width: jnp.swapaxes(k.reshape(b, n, width), 0, 1)
    colour = [by_view(keys[:, :5 * g], g, 5)]                    # (G, B, 5)
    local_crop_keys = None
    if n_local:
      local = sample_keys(jax.random.fold_in(key, LOCAL_STREAM), step, index, 6 * n_local)
      colour.append(by_view(local, n_local, 6)[:, :, :5])       # (L, B, 5)
      local_crop_keys = local[:, 5::6]
    crops = self.crops(keys[:, -1], local_crop_keys, images)
    out = []
    # Each group of same-sized views (the globals, the locals) goes through the colour ops
    # as one program vmapped over its views, with each view's own blur and solarize
    # probabilities: per image the same values as view by view, with half (or less) of the
    # program to trace and compile, and fewer, larger kernels on an accelerator.
    # zip stops at ``colour``: without local views there is no second group.
    for x, k, start in zip(crops, colour, (0, g)):
      probs = [self._view_probs(v) for v in range(start, start + x.shape[0])]
      blur = [p[0] for p in probs]
      solarize = [p[1] for p in probs]

      def colour_ops(k, x, blur_p, solarize_p):
        # An op whose probability is 0 in every view of the group returns its input
        # unchanged: skip it (its keys stay reserved, so the other draws do not move).
        if cfg.jitter_prob > 0:
          x = color_jitter(k[:, 0], x, cfg.jitter, cfg.jitter_prob)
        if cfg.grayscale_prob > 0:
          x = random_grayscale(k[:, 1], x, cfg.grayscale_prob)
        if max(blur) > 0:
          x = random_blur(k[:, 2], x, blur_p)
        if max(solarize) > 0:
          x = random_solarize(k[:, 3], x, solarize_p)
        return normalize(x, cfg.mean, cfg.std)

      y = jax.vmap(colour_ops)(k, x, jnp.asarray(blur), jnp.asarray(solarize))
      out += [y[v] for v in range(y.shape[0])]
    return out

  def eval_view(self, images: jax.Array) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    if x.shape[1:3] != (self.size, self.size):   # kept larger in memory (data.stored_size)
      x = jax.image.resize(x, (x.shape[0], self.size, self.size, x.shape[3]), "linear",
                           antialias=True)
    return normalize(x, self.cfg.mean, self.cfg.std)


class DeviceCropRecipe(Recipe):
  """Crops and flips on the device from whole (small) images: the CIFAR recipe."""

  def crops(self, keys, local_keys, images, num_global=None):
    images = images.astype(jnp.float32) / 255.0
    height, width = images.shape[1:3]

    def crop_flip(k, scale, size):   # k: (B, 2) keys, box then flip
      boxes = jax.vmap(lambda key: crop_box(key, height, width, scale))(k[:, 0])
      x = jax.vmap(lambda im, box: crop_resize(im, box, size))(images, boxes)
      return random_flip(k[:, 1], x)

    split = lambda key: jax.random.split(key, 2)
    # vmapped over the views of a group: one crop program per group, not one per view.
    glob = jax.vmap(lambda v: crop_flip(
        jax.vmap(lambda key: split(jax.random.fold_in(key, v)))(keys),
        tuple(self.cfg.crop_scale), self.size))(jnp.arange(num_global or self.num_global))
    local = None
    if self.num_local:
      local = jax.vmap(lambda k: crop_flip(jax.vmap(split)(k),
                                           tuple(self.cfg.local_crop_scale),
                                           self.local_size), in_axes=1)(local_keys)
    return glob, local


class HostCrops:
  """The host part of ``HostCropRecipe``: ``f(example, step) -> example`` on a decoded image,
  and ``from_encoded(data, index, step)`` on the file's bytes (the pipeline's path for
  files, which may decode JPEGs at reduced DCT scale, ``draft``). A plain picklable object:
  grain's worker processes receive it."""

  def __init__(self, seed, num_global, size, scale, num_local, local_size, local_scale,
               draft: bool):
    self.seed, self.num_local, self.draft = seed, num_local, draft
    # Locals drawn after the globals, from the same generator: the globals do not move.
    self.specs = [(size, scale)] * num_global + [(local_size, local_scale)] * num_local

  def _pack(self, crops):
    if not self.num_local:
      return np.stack(crops)
    k = len(crops) - self.num_local
    return {"global": np.stack(crops[:k]), "local": np.stack(crops[k:])}

  def _rng(self, index, step):
    return np.random.default_rng([self.seed, int(step), int(index)])

  def __call__(self, ex: dict, step: int) -> dict:
    rng = self._rng(ex["index"], step)
    crops = [host_ops.random_resized_crop_flip(ex["image"], rng, size, scale)
             for size, scale in self.specs]
    return {**ex, "image": self._pack(crops)}

  def from_encoded(self, data: bytes, index: int, step: int):
    return self._pack(host_ops.crops_from_encoded(data, self._rng(index, step), self.specs,
                                                  self.draft))


class HostCropRecipe(Recipe):
  """Crops and flips on the host from the full-size image (MoCo v3 at 224).

  The host ships ``image`` as (V, S, S, 3) uint8 global crops or, with local views,
  ``{"global": (V, S, S, 3), "local": (L, s, s, 3)}`` (the pipeline batches either): the
  locals travel at their own small size, never padded to the global one.
  """

  def host_transform(self):
    return HostCrops(self.seed, self.num_global, self.size, tuple(self.cfg.crop_scale),
                     self.num_local, self.local_size, tuple(self.cfg.local_crop_scale),
                     draft=bool(self.cfg.get("jpeg_draft", True)))

  def eval_transform(self):
    size = self.size
    return lambda image: host_ops.resize_center_crop(image, size)

  def crops(self, keys, local_keys, images, num_global=None):
    local = None
    if isinstance(images, dict):
      images, local = images["global"], images["local"]
    if images.shape[1] != self.num_global or (local is None) != (not self.num_local) or (
        local is not None and local.shape[1] != self.num_local):
      raise ValueError(f"host crops: expected {self.num_global} global and {self.num_local} "
                       f"local crops per image, got {images.shape} and "
                       f"{None if local is None else local.shape}")
    to_views = lambda x: jnp.swapaxes(x, 0, 1).astype(jnp.float32) / 255.0   # (V, B, ...)
    return (to_views(images[:, :num_global or self.num_global]),
            None if local is None else to_views(local))


RECIPES = {"cifar": DeviceCropRecipe, "mocov3": HostCropRecipe}


def check_local_views(cfg, image_size: int) -> int:
  """``aug.num_local`` after checking the local-view keys; one line naming the key if not."""
  num = cfg.get("num_local", 0) or 0
  if num < 0 or int(num) != num:
    raise ConfigError(f"config.aug.num_local={num}: expected a whole number >= 0")
  if not num:
    return 0
  size = cfg.local_size
  if size is None or not 0 < size <= image_size:
    raise ConfigError(f"config.aug.local_size={size}: with config.aug.num_local={num} set it "
                      f"to the local views' side, at most data.image_size={image_size}")
  lo, hi = cfg.local_crop_scale
  if not 0 < lo <= hi <= 1:
    raise ConfigError(f"config.aug.local_crop_scale={tuple(cfg.local_crop_scale)}: expected "
                      "0 < low <= high <= 1")
  return int(num)


def get_recipe(cfg, image_size: int, seed: int) -> Recipe:
  if cfg.name not in RECIPES:
    raise ConfigError(f"config.aug.name={cfg.name!r}: expected one of {sorted(RECIPES)}")
  return RECIPES[cfg.name](cfg, image_size, seed)
