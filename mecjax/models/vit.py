"""Vision Transformers as MoCo v3 builds them for self-supervised training.

Images are NHWC; the output is the class token after the final LayerNorm (what MoCo v3's
projector reads), of width ``num_features``. The network, in order:

* patch embedding: non-overlapping ``p x p`` patches, each a linear map of its ``p*p*C``
  pixels to ``width`` (a stride-``p`` convolution, computed as one matrix product);
* a learnt class token prepended to the ``h*w`` patch tokens;
* a fixed 2-D sin-cos position embedding (``sincos_2d``), computed for the grid of *this*
  input, so a 96x96 or 16x16 local crop runs with no interpolation; the class token gets
  zeros (MoCo v3);
* ``depth`` pre-norm blocks ``x + MHSA(LN(x))``, ``x + MLP(LN(x))`` (MLP ``width -> 4 width
  -> width`` with exact GELU; LayerNorm eps 1e-6), then a final LayerNorm.

Initialisation (MoCo v3's ``vits.py``): every Linear weight xavier-uniform, biases zero; the
fused qkv weight as three separate ``width x width`` matrices (limit ``sqrt(6 / 2 width)``,
not the fused matrix's ``sqrt(6 / 4 width)``); the patch projection xavier-uniform on its
flattened ``(p*p*C) x width`` matrix; the class token normal with std 1e-6.

``stop_grad_patch_embed``: MoCo v3's frozen random patch projection (``--stop-grad-conv1``),
which stabilises training at large batch. No gradient reaches it here, and the optimiser
leaves it at its initial value, weight decay included (``frozen_modules`` below names it;
``Method.frozen_mask`` and the loop's optimiser honour that).

Mixed precision: with ``dtype`` bfloat16 the matrix products and activations run in
bfloat16; parameters stay float32, LayerNorm statistics and the attention softmax are
float32, and the features leave in float32.

Parameter names follow timm's state-dict keys where the structure allows (``patch_embed``,
``cls_token``, ``block{i}/norm1``, ``attn/qkv``, ``attn/proj``, ``fc1``, ``fc2``, ``norm``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# xavier_uniform on a (fan_in, fan_out) kernel: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
xavier_uniform = nn.initializers.xavier_uniform()


def qkv_init(key, shape, dtype=jnp.float32):
  """xavier-uniform of each of the three (width, width) blocks of the fused (width, 3 width)
  qkv kernel, as MoCo v3 initialises Q, K and V separately."""
  fan_in, fan_out = shape[0], shape[1] // 3
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def sincos_2d(h: int, w: int, width: int, temperature: float = 10000.0) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding of an ``h x w`` token grid, shape (h*w, width).

  Tokens are in row-major order (row ``i``, column ``j``). With ``omega_k = temperature^(-k /
  (width/4))``, ``k < width/4``, token (i, j) gets ``[sin(i omega), cos(i omega), sin(j
  omega), cos(j omega)]``: the layout MoCo v3's ``build_2d_sincos_position_embedding``
  produces on its square grids. ``width`` must be a multiple of 4.
  """
  if width % 4:
    raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, "
                     f"got {width}")
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                           indexing="ij")
  a = rows.reshape(-1, 1) * omega
  b = cols.reshape(-1, 1) * omega
  return np.concatenate([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=1).astype(
      np.float32)


class PatchEmbed(nn.Module):
  """Non-overlapping ``patch x patch`` patches -> ``width`` (a stride-``patch`` convolution).

  The kernel is stored HWIO (``(p, p, C, width)``, a convolution's layout) and applied as
  one matrix product on the patches, which is the same map and faster on CPU.
  """
  patch: int
  width: int
  stop_gradient: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    p = self.patch
    if hh % p or ww % p:
      raise ValueError(f"ViT input of shape {x.shape}: height and width must be multiples of "
                       f"the patch size {p} (config.model.patch_size)")
    # xavier-uniform on the flattened (p*p*C, width) matrix, as MoCo v3 does.
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2),
                                            out_axis=-1)
    kernel = self.param("kernel", init, (p, p, c, self.width), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.width,), jnp.float32)
    if self.stop_gradient:
      kernel, bias = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(bias)
    h, w = hh // p, ww // p
    patches = x.reshape(b, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * w,
                                                                              p * p * c)
    dtype = self.dtype or jnp.float32
    y = patches.astype(dtype) @ kernel.reshape(p * p * c, self.width).astype(dtype)
    return y + bias.astype(dtype), (h, w)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection; softmax in float32."""
  num_heads: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    b, n, width = x.shape
    heads = self.num_heads
    qkv = nn.Dense(3 * width, kernel_init=qkv_init, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, n, 3, heads, width // heads)   # timm's layout of the fused output
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (b, n, heads, head_dim)
    q = q * jnp.asarray((width // heads) ** -0.5, q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, width)
    return nn.Dense(width, kernel_init=xavier_uniform, dtype=self.dtype, name="proj")(out)


class Block(nn.Module):
  """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""
  num_heads: int
  mlp_ratio: int = 4
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    ln = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    x = x + Attention(self.num_heads, dtype=self.dtype, name="attn")(ln("norm1")(x))
    y = nn.Dense(self.mlp_ratio * width, kernel_init=xavier_uniform, dtype=self.dtype,
                 name="fc1")(ln("norm2")(x))
    y = nn.gelu(y, approximate=False)   # torch.nn.GELU (exact erf), as timm's Mlp
    y = nn.Dense(width, kernel_init=xavier_uniform, dtype=self.dtype, name="fc2")(y)
    return x + y


class VisionTransformer(nn.Module):
  """ViT backbone returning the class token after the final LayerNorm.

  Attributes:
    patch_size: side of the square patches (16 for 224-px ImageNet, 4 for 32-px CIFAR).
    width: embedding width (a multiple of ``num_heads`` and of 4).
    depth: number of transformer blocks.
    num_heads: attention heads per block.
    mlp_ratio: MLP hidden width / ``width``.
    stop_grad_patch_embed: freeze the random patch projection (MoCo v3).
    dtype: computation dtype (parameters stay float32).
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: int = 4
  stop_grad_patch_embed: bool = False
  dtype: Any = None

  @property
  def num_features(self) -> int:
    return self.width

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train   # no batch statistics, no dropout: train and eval modes are the same map
    dtype = self.dtype or jnp.float32
    tokens, (h, w) = PatchEmbed(self.patch_size, self.width, self.stop_grad_patch_embed,
                                dtype=self.dtype, name="patch_embed")(x)
    tokens = tokens + jnp.asarray(sincos_2d(h, w, self.width), dtype)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.width),
                     jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (x.shape[0], 1, self.width)),
                         tokens], axis=1)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"block{i}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    return x[:, 0].astype(jnp.float32)


# The named sizes (config.model.name): patch size, width, depth, heads.
#   vit_small, vit_base: MoCo v3's ViT-S/16 and ViT-B/16 (``vits.py``). MoCo v3's ViT-S has
#     12 heads of 32, not DeiT-S's 6 of 64 (same parameter count).
#   vit_tiny_cifar: DeiT-Ti's sizes (192 wide, 12 deep, 3 heads) on 4x4 patches, so a
#     32x32 image is an 8x8 grid.
SIZES = {
    "vit_small": dict(patch_size=16, width=384, depth=12, num_heads=12),
    "vit_base": dict(patch_size=16, width=768, depth=12, num_heads=12),
    "vit_tiny_cifar": dict(patch_size=4, width=192, depth=12, num_heads=3),
}
