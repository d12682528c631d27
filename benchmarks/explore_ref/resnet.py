"""ResNets laid out as torchvision's, so weights port both ways with equal features.

Padding is explicit and symmetric, as PyTorch's: flax's ``'SAME'`` pads a stride-2
convolution (0, 1) instead of (1, 1) and would shift every downsampled feature map by half
a pixel against a converted checkpoint. Submodule names follow torchvision's state-dict keys
(``conv1``, ``bn1``, ``layer1_0``, ``downsample_conv``, ...) so the mapping is mechanical.

Images are NHWC; the output is the globally average-pooled feature vector (the ``fc`` input
of torchvision's ResNet), of width ``512 * width`` (BasicBlock) or ``2048 * width``
(Bottleneck).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from explore_ref.norm import BatchNorm

# torchvision's ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features, kernel, stride=1, name=None, dtype=None):
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=conv_init,
                 dtype=dtype, name=name)


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Any = None
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = _conv(self.features, 3, self.stride, "conv1", self.dtype)(x)
    y = nn.relu(bn(name="bn1")(y))
    y = _conv(self.features, 3, 1, "conv2", self.dtype)(y)
    y = bn(name="bn2", scale_init=last_init)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _conv(self.features, 1, self.stride, "downsample_conv", self.dtype)(x)
      x = bn(name="downsample_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """torchvision's v1.5 bottleneck: the stride sits on the 3x3 convolution."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Any = None
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    bn = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    out = self.features * self.expansion
    y = nn.relu(bn(name="bn1")(_conv(self.features, 1, 1, "conv1", self.dtype)(x)))
    y = nn.relu(bn(name="bn2")(_conv(self.features, 3, self.stride, "conv2", self.dtype)(y)))
    y = bn(name="bn3", scale_init=last_init)(_conv(out, 1, 1, "conv3", self.dtype)(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = _conv(out, 1, self.stride, "downsample_conv", self.dtype)(x)
      x = bn(name="downsample_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet backbone returning pooled features.

  Attributes:
    stage_sizes: blocks per stage ([2,2,2,2] ResNet-18, [3,4,6,3] ResNet-50).
    block: BasicBlock or Bottleneck.
    width: multiplier of the base widths (64, 128, 256, 512); may be fractional.
    cifar_stem: 3x3 stride-1 first convolution and no max-pool (for 32x32 inputs).
    zero_init_residual: zero the last BN scale of every residual block.
    dtype: computation dtype (parameters stay float32).
  """
  stage_sizes: Sequence[int]
  block: Any
  width: float = 1.0
  cifar_stem: bool = False
  zero_init_residual: bool = False
  dtype: Any = None

  @property
  def num_features(self) -> int:
    return int(512 * self.width) * self.block.expansion

  @nn.compact
  def __call__(self, x, train: bool = True):
    dtype = self.dtype or jnp.float32
    x = x.astype(dtype)
    base = int(64 * self.width)
    if self.cifar_stem:
      x = _conv(base, 3, 1, "conv1", self.dtype)(x)
    else:
      x = _conv(base, 7, 2, "conv1", self.dtype)(x)
    x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name="bn1")(x))
    if not self.cifar_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = self.block(int(64 * self.width) * 2**i, stride=2 if (i > 0 and j == 0) else 1,
                       zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                       name=f"layer{i + 1}_{j}")(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def resnet18(**kw) -> ResNet:
  return ResNet(stage_sizes=(2, 2, 2, 2), block=BasicBlock, **kw)


def resnet50(**kw) -> ResNet:
  return ResNet(stage_sizes=(3, 4, 6, 3), block=Bottleneck, **kw)
