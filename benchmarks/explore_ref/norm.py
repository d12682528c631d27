"""BatchNorm with one-pass float32 statistics and PyTorch's running-statistics semantics.

Why not ``flax.linen.BatchNorm``: on CPU this one-pass form (mean and mean of squares in one
fused reduction, then a single multiply-add) measured 15-40% faster per ResNet step
(benchmarks/RESULTS.md), and PyTorch semantics (running variance from the *unbiased* batch
variance, momentum 0.1) make converted torchvision weights and statistics behave the same.

Statistics are taken over every axis but the last, of whatever batch the module sees. Under
``jit`` with the batch sharded over a Mesh that batch is the global one, so this is SyncBN
without any collective written here. Variable names (``scale``, ``bias``; ``mean``, ``var``)
match flax's BatchNorm.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.Module):
  """Batch normalisation over all leading axes.

  Attributes:
    use_running_average: evaluate with the running statistics (eval mode).
    momentum: running-statistics decay in flax's convention (``0.9`` = PyTorch ``0.1``).
    epsilon: added to the variance (PyTorch default 1e-5).
    use_scale, use_bias: learnable affine (``affine=False`` in PyTorch is both False).
    scale_init: ``zeros`` for the zero-init-residual last BN of a block.
    dtype: computation dtype of the output (statistics are always float32).
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Any = nn.initializers.ones
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_ra = nn.merge_param("use_running_average", self.use_running_average,
                            use_running_average)
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))

    if use_ra:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axis=axes)
      var = jnp.maximum(jnp.mean(xf * xf, axis=axes) - mean * mean, 0.0)
      if not self.is_initializing():
        n = x.size // features
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased

    mul = jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      mul = mul * self.param("scale", self.scale_init, (features,), jnp.float32)
    add = -mean * mul
    if self.use_bias:
      add = add + self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    dtype = self.dtype or x.dtype
    return x.astype(dtype) * mul.astype(dtype) + add.astype(dtype)
