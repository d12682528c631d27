"""Encoders, heads and BatchNorm: torchvision shapes, PyTorch padding and BN semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mecjax.models import BatchNorm, MLPHead, resnet18, resnet50
from mecjax.models.norm import _MIN_ROWS
from mecjax.models.resnet import _conv, conv2d


def n_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def init(model, shape, **kw):
  return model.init(jax.random.key(0), jnp.zeros(shape), **kw)


def test_parameter_counts_match_torchvision():
  # torchvision resnet50 without fc: 23,508,032; resnet18 with a 3x3 stem: 11,168,832.
  v50 = jax.eval_shape(lambda: init(resnet50(), (1, 224, 224, 3), train=True))
  v18 = jax.eval_shape(lambda: init(resnet18(cifar_stem=True), (1, 32, 32, 3), train=True))
  assert n_params(v50["params"]) == 23_508_032
  assert n_params(v18["params"]) == 11_168_832
  assert resnet50().num_features == 2048 and resnet18(width=0.25).num_features == 128


def test_stage_sizes_set_the_blocks_per_stage_and_are_checked():
  from mecjax import configlib
  from mecjax.models import get_encoder
  model = configlib.base().model
  model.name = "resnet50"
  blocks = lambda: sorted({k.split("_")[0] + "_" + k.split("_")[1] for k in jax.eval_shape(
      lambda: init(get_encoder(model), (1, 64, 64, 3), train=True))["params"]
      if k.startswith("layer")})
  assert len(blocks()) == 16   # unset: ResNet-50's (3, 4, 6, 3)
  model.stage_sizes = (1, 2, 1, 1)
  assert blocks() == ["layer1_0", "layer2_0", "layer2_1", "layer3_0", "layer4_0"]
  for bad in ((1, 1, 1), (1, 0, 1, 1)):
    model.stage_sizes = bad
    with pytest.raises(configlib.ConfigError, match=r"^config.model.stage_sizes=.*four block"):
      get_encoder(model)
  model.name, model.stage_sizes = "vit_small", (1, 1, 1, 1)
  with pytest.raises(configlib.ConfigError, match="ResNet encoders only"):
    get_encoder(model)


def test_zero_init_residual_zeroes_the_last_bn_of_every_block():
  v = init(resnet18(width=0.125, cifar_stem=True, zero_init_residual=True), (1, 16, 16, 3),
           train=True)
  blocks = [k for k in v["params"] if k.startswith("layer")]
  assert len(blocks) == 8
  for k in blocks:
    assert not np.any(np.asarray(v["params"][k]["bn2"]["scale"]))
    assert np.all(np.asarray(v["params"][k]["bn1"]["scale"]) == 1)


def _torch_conv2d(x, w, stride, pad):
  """PyTorch Conv2d (cross-correlation, symmetric zero padding) in numpy. x: NHWC, w: HWIO."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = w.shape[:2]
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
      out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
  return out


@pytest.mark.parametrize("kernel,stride,size", [(3, 2, 8), (7, 2, 12), (3, 1, 6), (1, 2, 8)])
def test_convolutions_pad_like_pytorch(kernel, stride, size):
  # flax 'SAME' would pad a stride-2 conv (0, 1): a half-pixel shift against torchvision.
  conv = _conv(4, kernel, stride)
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  params = conv.init(jax.random.key(1), jnp.asarray(x))
  got = np.asarray(conv.apply(params, jnp.asarray(x)))
  want = _torch_conv2d(x.astype(np.float64), np.asarray(params["params"]["kernel"],
                                                          np.float64), stride, (kernel - 1) // 2)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _lax_conv(x, w, stride, pad):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (kernel, stride, size): the phase-decomposed stride-2 input gradient (3, 2, even), its
# fallback (3, 2, odd), the 1x1 matrix-product shortcut at both strides, the 7x7 stem, 3x3/1.
@pytest.mark.parametrize("kernel,stride,size", [(3, 2, 8), (3, 2, 7), (1, 2, 8), (1, 2, 7),
                                                (1, 1, 6), (7, 2, 12), (3, 1, 6)])
def test_conv2d_custom_gradient_equals_autodiff(kernel, stride, size):
  rng = np.random.default_rng(kernel * 100 + stride * 10 + size)
  x = jnp.asarray(rng.normal(size=(3, size, size, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 6)), jnp.float32)
  pad = (kernel - 1) // 2
  out_shape = _lax_conv(x, w, stride, pad).shape
  ct = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w, stride, pad) * ct)
  got = jax.jit(jax.grad(loss(conv2d), argnums=(0, 1)))(x, w)
  want = jax.grad(loss(_lax_conv), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(np.asarray(conv2d(x, w, stride, pad)),
                             np.asarray(_lax_conv(x, w, stride, pad)), rtol=1e-5, atol=1e-5)
  for g, h in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(32, 8, 8, 16), (128, 4, 4, 48), (16, 16, 16, 3)])
def test_batchnorm_kernels_match_the_plain_formula_with_gradients(shape):
  # Enough rows for the blocked column-sum kernels (and the folded view of narrow rows).
  assert np.prod(shape[:-1]) >= _MIN_ROWS
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 2.0, size=shape), jnp.float32)
  ct = jnp.asarray(rng.normal(size=shape), jnp.float32)
  c = shape[-1]
  params = {"scale": jnp.asarray(rng.normal(1, 0.2, size=c), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=c), jnp.float32)}
  stats = {"mean": jnp.zeros(c), "var": jnp.ones(c)}
  bn = BatchNorm(use_running_average=False)

  def ours(x, p):
    y, _ = bn.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
    return jnp.sum(y * ct)

  def plain(x, p):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    return jnp.sum(((x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]) * ct)

  (v1, g1), (v2, g2) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, params)
                        for f in (ours, plain))
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-4)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3,
                               atol=2e-3 * float(np.abs(np.asarray(b)).max()))


def test_batchnorm_train_mode_and_running_statistics_as_pytorch():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(8, 5, 5, 4)).astype(np.float32)
  bn = BatchNorm(use_running_average=False)
  v = bn.init(jax.random.key(0), jnp.asarray(x))
  params = {"scale": jnp.arange(1.0, 5.0), "bias": jnp.arange(4.0)}
  out, mut = bn.apply({"params": params, "batch_stats": v["batch_stats"]}, jnp.asarray(x),
                      mutable=["batch_stats"])
  flat = x.reshape(-1, 4).astype(np.float64)
  mean, var = flat.mean(0), flat.var(0)
  want = (x - mean) / np.sqrt(var + 1e-5) * np.arange(1, 5) + np.arange(4)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
  # PyTorch: running = 0.9 running + 0.1 batch, the variance unbiased.
  np.testing.assert_allclose(np.asarray(mut["batch_stats"]["mean"]), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(mut["batch_stats"]["var"]),
                             0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
  # Eval mode normalises with the running statistics.
  ev = BatchNorm(use_running_average=True).apply(
      {"params": params, "batch_stats": mut["batch_stats"]}, jnp.asarray(x))
  rm, rv = (np.asarray(mut["batch_stats"][k]) for k in ("mean", "var"))
  np.testing.assert_allclose(np.asarray(ev), (x - rm) / np.sqrt(rv + 1e-5) * np.arange(1, 5)
                             + np.arange(4), rtol=1e-4, atol=1e-4)


def test_batchnorm_without_affine_has_no_parameters():
  v = BatchNorm(use_running_average=False, use_scale=False, use_bias=False).init(
      jax.random.key(0), jnp.ones((4, 3)))
  assert "params" not in v and set(v["batch_stats"]) == {"mean", "var"}


@pytest.mark.slow
def test_batchnorm_statistics_are_global_over_a_sharded_batch():
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  model = resnet18(width=0.125, cifar_stem=True)
  x = np.random.default_rng(1).normal(size=(16, 8, 8, 3)).astype(np.float32)
  v = init(model, x.shape, train=True)
  f = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  single = f(v, jnp.asarray(x))
  sharded = f(v, jax.device_put(x, NamedSharding(mesh, P("data"))))
  # Statistics per device (2 of the 16 images) move the outputs by O(1) (median 0.8, the
  # outputs' scale is 6); another reduction order through 17 float32 BN layers moves them by
  # up to 1.8e-5 (CI on an AMD EPYC VM, 2026-12-02).
  np.testing.assert_allclose(np.asarray(sharded[0]), np.asarray(single[0]), rtol=1e-4,
                             atol=1e-4)
  for a, b in zip(jax.tree.leaves(sharded[1]), jax.tree.leaves(single[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_mlp_head_layout():
  head = MLPHead(hidden=(16, 8), out_dim=6, out_bn="no_affine")
  v = init(head, (4, 10), train=True)
  p = v["params"]
  assert set(p) == {"linear0", "bn0", "linear1", "bn1", "linear2"}
  assert "bias" not in p["linear0"]["dense"] and "bias" not in p["linear2"]["dense"]
  assert p["linear2"]["dense"]["kernel"].shape == (8, 6)
  pred = init(MLPHead(hidden=(5,), out_dim=6), (4, 6), train=True)["params"]
  assert "bias" in pred["linear1"]["dense"]
  bound = 1 / np.sqrt(6)  # PyTorch Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  assert np.abs(np.asarray(pred["linear0"]["dense"]["kernel"])).max() <= bound
  with pytest.raises(ValueError, match="out_bn"):
    init(MLPHead(hidden=(), out_dim=3, out_bn="yes"), (2, 3), train=True)


@pytest.mark.parametrize("spelt", ["none", "None"])
def test_a_head_block_out_bn_spelt_none_on_the_command_line_is_no_bn(spelt):
  import ml_collections
  from mecjax.methods.base import mlp_head
  cfg = ml_collections.ConfigDict(dict(hidden=(8,), out_dim=4, out_bn=spelt, out_bias=True))
  head = mlp_head(cfg, jnp.float32)
  assert head.out_bn is None
  assert set(init(head, (3, 5), train=True)["params"]) == {"linear0", "bn0", "linear1"}
  cfg.out_bn = "no_affine"
  assert mlp_head(cfg, jnp.float32).out_bn == "no_affine"
