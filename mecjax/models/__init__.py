"""Flax modules, chosen by name from config: encoders (backbones) and MLP heads.

``get_encoder(cfg)`` reads ``cfg.name`` and the keys that encoder takes; every encoder
maps NHWC images to pooled features and exposes ``num_features``. ResNets read ``width``
(multiplier of the base widths), ``zero_init_residual`` and ``stage_sizes`` (blocks per
stage; unset: the named depth's); ViTs read ``width`` (multiplier
of the named size's embedding width) and the ViT-only keys ``patch_size``, ``depth``,
``num_heads`` (unset: the named size's) and ``stop_grad_patch_embed``, which a ResNet
refuses. Every encoder reads ``kernels`` ("auto" | "cpu" | "xla": ``resnet.KERNELS``); a ViT
has no CPU-specific kernels (matrix products and LayerNorm only), so it accepts the key and
computes the same whatever its value.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from mecjax.configvalues import ConfigError
from mecjax.models.heads import MLPHead
from mecjax.models.norm import BatchNorm
from mecjax.models.resnet import KERNELS, ResNet, resnet18, resnet50
from mecjax.models.vit import SIZES as VIT_SIZES
from mecjax.models.vit import VisionTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


_VIT_KEYS = ("patch_size", "depth", "num_heads", "stop_grad_patch_embed")


def _resnet(factory: Callable[..., ResNet], cifar_stem: bool):
  def build(cfg) -> ResNet:
    for key in _VIT_KEYS:
      if cfg.get(key):
        raise ConfigError(f"config.model.{key}={cfg.get(key)!r} applies to ViT encoders "
                          f"only, not config.model.name={cfg.name!r}")
    return factory(stage_sizes=stage_sizes_of(cfg), width=cfg.width, cifar_stem=cifar_stem,
                   zero_init_residual=cfg.zero_init_residual, dtype=dtype_of(cfg),
                   kernels=kernels_of(cfg))
  return build


def _vit(name: str):
  size = VIT_SIZES[name]

  def build(cfg) -> VisionTransformer:
    kernels_of(cfg)   # checked; nothing in a ViT depends on it
    if cfg.get("stage_sizes"):
      raise ConfigError(f"config.model.stage_sizes={cfg.stage_sizes!r} applies to ResNet "
                        f"encoders only, not config.model.name={cfg.name!r} (ViTs: depth)")
    pick = lambda key: cfg.get(key) or size[key]
    width = int(round(size["width"] * cfg.width))
    heads = pick("num_heads")
    if width < 4 or width % 4 or width % heads:
      raise ConfigError(
          f"config.model.width={cfg.width} gives a {name} embedding width of {width}: it must "
          f"be a multiple of 4 (2-D sin-cos position embedding) and of "
          f"config.model.num_heads={heads}")
    return VisionTransformer(patch_size=pick("patch_size"), width=width, depth=pick("depth"),
                             num_heads=heads,
                             stop_grad_patch_embed=bool(cfg.get("stop_grad_patch_embed")),
                             dtype=dtype_of(cfg))
  return build


ENCODERS: dict[str, Callable[[Any], Any]] = {
    "resnet18": _resnet(resnet18, cifar_stem=False),
    "resnet18_cifar": _resnet(resnet18, cifar_stem=True),
    "resnet50": _resnet(resnet50, cifar_stem=False),
    "resnet50_cifar": _resnet(resnet50, cifar_stem=True),
    **{name: _vit(name) for name in VIT_SIZES},   # vit_small, vit_base, vit_tiny_cifar
}


def dtype_of(cfg):
  if cfg.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype={cfg.dtype!r}: expected one of {sorted(DTYPES)}")
  return DTYPES[cfg.dtype]


def stage_sizes_of(cfg) -> tuple[int, ...] | None:
  """``cfg.stage_sizes`` (config.model, ResNets): blocks in each of the four stages, checked;
  None (the named depth's: ``resnet.STAGES``) where unset."""
  sizes = cfg.get("stage_sizes")
  if not sizes:
    return None
  sizes = tuple(sizes)
  if len(sizes) != 4 or not all(isinstance(n, int) and n >= 1 for n in sizes):
    raise ConfigError(f"config.model.stage_sizes={sizes!r}: expected four block counts >= 1 "
                      "(resnet18: (2, 2, 2, 2), resnet50: (3, 4, 6, 3))")
  return sizes


def kernels_of(cfg) -> str:
  """``cfg.kernels`` (config.model), checked; "auto" where a config dict has no such key."""
  kernels = cfg.get("kernels") or "auto"
  if kernels not in KERNELS:
    raise ConfigError(f"config.model.kernels={kernels!r}: expected one of {list(KERNELS)}")
  return kernels


def frozen_modules(cfg) -> tuple[str, ...]:
  """Names of the encoder's submodules whose parameters the optimiser must leave at their
  initial values, weight decay included: MoCo v3's frozen random patch projection."""
  if cfg.name in VIT_SIZES and cfg.get("stop_grad_patch_embed"):
    return ("patch_embed",)
  return ()


def get_encoder(cfg):
  """The encoder named by ``cfg.name`` (config.model)."""
  if cfg.name not in ENCODERS:
    raise ConfigError(f"config.model.name={cfg.name!r}: expected one of {sorted(ENCODERS)}")
  return ENCODERS[cfg.name](cfg)


__all__ = ["BatchNorm", "ENCODERS", "MLPHead", "ResNet", "VisionTransformer", "get_encoder",
           "frozen_modules", "resnet18", "resnet50", "dtype_of", "kernels_of", "KERNELS"]
