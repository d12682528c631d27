"""Flax modules, chosen by name from config: encoders (backbones) and MLP heads.

``get_encoder(cfg)`` reads ``cfg.name`` and the keys that encoder takes; every encoder
maps NHWC images to pooled features and exposes ``num_features``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from mecjax.configlib import ConfigError
from mecjax.models.heads import MLPHead
from mecjax.models.norm import BatchNorm
from mecjax.models.resnet import ResNet, resnet18, resnet50

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _resnet(factory: Callable[..., ResNet], cifar_stem: bool):
  def build(cfg) -> ResNet:
    return factory(width=cfg.width, cifar_stem=cifar_stem,
                   zero_init_residual=cfg.zero_init_residual, dtype=dtype_of(cfg))
  return build


ENCODERS: dict[str, Callable[[Any], Any]] = {
    "resnet18": _resnet(resnet18, cifar_stem=False),
    "resnet18_cifar": _resnet(resnet18, cifar_stem=True),
    "resnet50": _resnet(resnet50, cifar_stem=False),
    "resnet50_cifar": _resnet(resnet50, cifar_stem=True),
}


def dtype_of(cfg):
  if cfg.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype={cfg.dtype!r}: expected one of {sorted(DTYPES)}")
  return DTYPES[cfg.dtype]


def get_encoder(cfg):
  """The encoder named by ``cfg.name`` (config.model)."""
  if cfg.name not in ENCODERS:
    raise ConfigError(f"config.model.name={cfg.name!r}: expected one of {sorted(ENCODERS)}")
  return ENCODERS[cfg.name](cfg)


__all__ = ["BatchNorm", "ENCODERS", "MLPHead", "ResNet", "get_encoder", "resnet18",
           "resnet50", "dtype_of"]
