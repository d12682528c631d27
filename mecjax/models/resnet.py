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
import jax
import jax.numpy as jnp

from mecjax.models.norm import BatchNorm

# torchvision's ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# Which convolution and BatchNorm kernels run (``config.model.kernels``): "cpu" the ones
# arranged for XLA:CPU below, "xla" plain ``lax.conv_general_dilated`` with autodiff and the
# plain BatchNorm formula, "auto" the CPU ones where the computation is lowered for the CPU
# and the plain ones for every other platform. "auto" is decided per lowering platform
# (``jax.lax.platform_dependent``), not by the machine running Python, so a step exported
# for cuda or tpu from a CPU host is the step an accelerator runs. The parameters are the
# same whichever runs.
KERNELS = ("auto", "cpu", "xla")


def check_kernels(kernels: str) -> str:
  if kernels not in KERNELS:
    raise ValueError(f"kernels={kernels!r}: expected one of {KERNELS}")
  return kernels


def _conv(features, kernel, stride=1, name=None, dtype=None, kernels="auto"):
  return Conv(features, kernel, stride, dtype=dtype, kernels=kernels, name=name)


class Conv(nn.Module):
  """``nn.Conv(features, (k, k), strides=(s, s), padding=((p, p), (p, p)), use_bias=False)``
  with ``p = (k - 1) // 2``: the same parameter (``kernel``, HWIO, float32), initialisation
  and output; ``kernels`` picks how it is computed (``conv``)."""
  features: int
  kernel_size: int
  stride: int = 1
  dtype: Any = None
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
    dtype = self.dtype or jnp.result_type(x.dtype, kernel.dtype)
    return conv(x.astype(dtype), kernel.astype(dtype), self.stride, (k - 1) // 2,
                self.kernels)


def conv(x, kernel, stride: int, pad: int, kernels: str = "auto"):
  """NHWC x HWIO convolution, strides ``(stride, stride)``, symmetric padding ``pad``:
  ``conv2d`` (kernels "cpu"), the plain ``lax.conv_general_dilated`` ("xla"), or per
  lowering platform ("auto": ``conv2d`` on cpu, the plain one elsewhere)."""
  if check_kernels(kernels) == "cpu":
    return conv2d(x, kernel, stride, pad)
  if kernels == "xla":
    return _conv2d(x, kernel, stride, pad)
  # Both branches are traced; lowering for one platform keeps only that platform's branch
  # (forward and gradient), so no while loop of ``conv2d`` reaches a GPU or TPU program.
  return jax.lax.platform_dependent(
      x, kernel, cpu=lambda x, k: conv2d(x, k, stride, pad),
      default=lambda x, k: _conv2d(x, k, stride, pad))


# ------------------------------------------------------------- convolution for XLA:CPU
#
# XLA:CPU runs every convolution through Eigen. Its forward pass is within ~25% of
# PyTorch's (oneDNN); its gradients are where a ResNet step loses most of its time.
# ``conv2d`` keeps the forward and arranges the backward pass (effects on a CIFAR
# ResNet-18 forward+backward, batch 256, measured on a 2-core CPU):
#
# * Operands are materialised first (``_materialize``): -24% (width 64) to -32% (width 16).
#   The weight gradient is a convolution over transposed copies of the input and of the
#   output gradient; left alone, XLA fuses the whole BatchNorm/ReLU/residual chain that
#   produced them into those transposes and recomputes it with a transposed, cache-hostile
#   access pattern (up to ~100 fused ops per transpose). An optimization barrier does not
#   stop that on CPU (it is expanded before fusion); a while loop that runs no iteration does.
# * The input gradient of a stride-2 3x3 convolution is XLA's input-dilated convolution,
#   up to 8x slower than a plain one in Eigen. It is computed instead as one stride-1 2x2
#   convolution of the output gradient into the four phases of the input
#   (``_dx_stride2``), then a depth-to-space transpose: -2.5% to -5%.
# * 1x1 convolutions (the downsampling shortcuts) are matrix products on the strided
#   input: -2% at width 16, neutral at 64.
#
# Values are those of ``jax.lax.conv_general_dilated`` and its autodiff up to float32
# summation order (tests/test_kernels.py). None of this is for an accelerator: there a while
# loop is a device-host round trip that also splits fusions, and cuDNN / the TPU compiler
# handle strided and 1x1 gradients themselves, so "auto" gives them the plain convolution.


def _conv2d(x, kernel, stride: int, pad: int):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv1x1(x, kernel, stride: int):
  return jnp.einsum("nhwc,cd->nhwd", x[:, ::stride, ::stride, :], kernel[0, 0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, kernel, stride: int, pad: int):
  """NHWC x HWIO convolution, strides ``(stride, stride)``, symmetric padding ``pad``."""
  if kernel.shape[:2] == (1, 1) and pad == 0:
    return _conv1x1(x, kernel, stride)
  return _conv2d(x, kernel, stride, pad)


def _conv2d_fwd(x, kernel, stride, pad):
  return conv2d(x, kernel, stride, pad), (x, kernel)


def _conv2d_bwd(stride, pad, res, g):
  x, kernel = res
  x, g = _materialize((x, g), g[(0,) * g.ndim])
  n, h, w, _ = x.shape
  if kernel.shape[:2] == (1, 1) and pad == 0:
    xs = x[:, ::stride, ::stride, :]
    d_kernel = jnp.einsum("nhwc,nhwd->cd", xs, g)[None, None]
    dxs = jnp.einsum("nhwd,cd->nhwc", g, kernel[0, 0])
    if stride == 1:
      return dxs, d_kernel
    # Scatter back to the strided positions: interior padding of the small map.
    hs, ws = dxs.shape[1:3]
    cfg = [(0, 0, 0), (0, h - (hs - 1) * stride - 1, stride - 1),
           (0, w - (ws - 1) * stride - 1, stride - 1), (0, 0, 0)]
    return jax.lax.pad(dxs, jnp.zeros((), dxs.dtype), cfg), d_kernel
  _, vjp_kernel = jax.vjp(lambda k: _conv2d(x, k, stride, pad), kernel)
  (d_kernel,) = vjp_kernel(g)
  if stride == 2 and pad == 1 and kernel.shape[:2] == (3, 3) and h % 2 == 0 and w % 2 == 0:
    dx = _dx_stride2(g, kernel)
  else:
    _, vjp_x = jax.vjp(lambda x: _conv2d(x, kernel, stride, pad), x)
    (dx,) = vjp_x(g)
  return dx, d_kernel


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# Input row 2i + a of a stride-2, pad-1, 3x3 convolution is read by output rows i + d through
# kernel row ``_TAP[a][d]`` (None: not read): row 2i by row i (tap 1), row 2i + 1 by rows i
# (tap 2) and i + 1 (tap 0). The same holds for columns.
_TAP = ((1, None), (2, 0))


def _dx_stride2(g, kernel):
  """Input gradient of a 3x3, stride-2, pad-1 convolution (even input size) from its output
  gradient ``g`` (N, Ho, Wo, Cout): a stride-1 2x2 convolution with 4 Cin outputs, one per
  (row, column) phase of the input, then depth-to-space."""
  n, ho, wo, _ = g.shape
  cin = kernel.shape[2]
  wt = jnp.swapaxes(kernel, 2, 3)                       # (3, 3, Cout, Cin)
  zero = jnp.zeros_like(wt[0, 0])
  taps = [[jnp.stack([wt[_TAP[a][di], _TAP[b][dj]]
                      if _TAP[a][di] is not None and _TAP[b][dj] is not None else zero
                      for a in range(2) for b in range(2)], axis=-2)   # (Cout, 4, Cin)
           for dj in range(2)] for di in range(2)]
  k = jnp.stack([jnp.stack(row) for row in taps])      # (2, 2, Cout, 4, Cin)
  k = k.reshape(2, 2, k.shape[2], 4 * cin)
  y = jax.lax.conv_general_dilated(g, k, (1, 1), ((0, 1), (0, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = y.reshape(n, ho, wo, 2, 2, cin).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, 2 * ho, 2 * wo, cin)


def _materialize(tree, token):
  """``tree`` unchanged, but as the result of a while loop (that runs no iteration unless
  ``token`` is NaN, and then one that changes nothing), which XLA cannot fuse through: its
  consumers read the buffers instead of recomputing the producers' fused chains."""
  n = (token != token).astype(jnp.int32)

  def body(carry):
    i, t = carry
    return i + 1, jax.tree.map(lambda a: jnp.where(i < 0, a + a, a), t)

  return jax.lax.while_loop(lambda carry: carry[0] < n, body, (jnp.int32(0), tree))[1]


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Any = None
  kernels: str = "auto"
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype,
                           kernels=self.kernels)
    cv = functools.partial(_conv, dtype=self.dtype, kernels=self.kernels)
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = cv(self.features, 3, self.stride, "conv1")(x)
    y = nn.relu(bn(name="bn1")(y))
    y = cv(self.features, 3, 1, "conv2")(y)
    y = bn(name="bn2", scale_init=last_init)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = cv(self.features, 1, self.stride, "downsample_conv")(x)
      x = bn(name="downsample_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """torchvision's v1.5 bottleneck: the stride sits on the 3x3 convolution."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Any = None
  kernels: str = "auto"
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    bn = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype,
                           kernels=self.kernels)
    cv = functools.partial(_conv, dtype=self.dtype, kernels=self.kernels)
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    out = self.features * self.expansion
    y = nn.relu(bn(name="bn1")(cv(self.features, 1, 1, "conv1")(x)))
    y = nn.relu(bn(name="bn2")(cv(self.features, 3, self.stride, "conv2")(y)))
    y = bn(name="bn3", scale_init=last_init)(cv(out, 1, 1, "conv3")(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = cv(out, 1, self.stride, "downsample_conv")(x)
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
    kernels: "auto" | "cpu" | "xla", which convolution and BatchNorm kernels (``KERNELS``).
  """
  stage_sizes: Sequence[int]
  block: Any
  width: float = 1.0
  cifar_stem: bool = False
  zero_init_residual: bool = False
  dtype: Any = None
  kernels: str = "auto"

  @property
  def num_features(self) -> int:
    return int(512 * self.width) * self.block.expansion

  @nn.compact
  def __call__(self, x, train: bool = True):
    dtype = self.dtype or jnp.float32
    x = x.astype(dtype)
    base = int(64 * self.width)
    if self.cifar_stem:
      x = _conv(base, 3, 1, "conv1", self.dtype, self.kernels)(x)
    else:
      x = _conv(base, 7, 2, "conv1", self.dtype, self.kernels)(x)
    x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype,
                          kernels=self.kernels, name="bn1")(x))
    if not self.cifar_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = self.block(int(64 * self.width) * 2**i, stride=2 if (i > 0 and j == 0) else 1,
                       zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                       kernels=self.kernels, name=f"layer{i + 1}_{j}")(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


STAGES = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}


def resnet18(stage_sizes=None, **kw) -> ResNet:
  return ResNet(stage_sizes=tuple(stage_sizes or STAGES["resnet18"]), block=BasicBlock, **kw)


def resnet50(stage_sizes=None, **kw) -> ResNet:
  return ResNet(stage_sizes=tuple(stage_sizes or STAGES["resnet50"]), block=Bottleneck, **kw)
