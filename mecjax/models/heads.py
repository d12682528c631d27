"""Projector / predictor MLPs: ``[Linear - BN - ReLU] x len(hidden) - Linear [- BN]``.

Initialisation is PyTorch's ``nn.Linear`` default (weights and bias uniform in
``±1/sqrt(fan_in)``), as the official MEC, SimSiam and BYOL heads are.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mecjax.configvalues import ConfigError
from mecjax.models.norm import BatchNorm

# kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear_bias_init(fan_in: int):
  bound = 1.0 / jnp.sqrt(max(fan_in, 1))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Linear(nn.Module):
  """``nn.Dense`` with PyTorch's default initialisation."""
  features: int
  use_bias: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, use_bias=self.use_bias, kernel_init=linear_init,
                    bias_init=linear_bias_init(x.shape[-1]), dtype=self.dtype,
                    name="dense")(x)


class MLPHead(nn.Module):
  """MLP head.

  Attributes:
    hidden: widths of the hidden ``Linear(no bias) - BN - ReLU`` layers.
    out_dim: width of the output Linear.
    out_bias: bias on the output Linear (dropped when a BN follows: it would cancel).
    out_bn: None, ``'affine'`` or ``'no_affine'``: a BN after the output Linear.
    hidden_bias: bias on the hidden Linears (False: BN follows them).
    kernels: the BatchNorms' kernels (``config.model.kernels``; ``norm.BatchNorm``).
  """
  hidden: Sequence[int]
  out_dim: int
  out_bias: bool = True
  out_bn: str | None = None
  hidden_bias: bool = False
  dtype: Any = None
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = True):
    for i, width in enumerate(self.hidden):
      x = Linear(width, use_bias=self.hidden_bias, dtype=self.dtype, name=f"linear{i}")(x)
      x = BatchNorm(use_running_average=not train, dtype=self.dtype, kernels=self.kernels,
                    name=f"bn{i}")(x)
      x = nn.relu(x)
    n = len(self.hidden)
    x = Linear(self.out_dim, use_bias=self.out_bias and self.out_bn is None, dtype=self.dtype,
               name=f"linear{n}")(x)
    if self.out_bn is not None:
      if self.out_bn not in ("affine", "no_affine"):
        raise ConfigError(f"out_bn must be None, 'affine' or 'no_affine', got {self.out_bn!r}")
      affine = self.out_bn == "affine"
      x = BatchNorm(use_running_average=not train, use_scale=affine, use_bias=affine,
                    dtype=self.dtype, kernels=self.kernels, name=f"bn{n}")(x)
    return x
