"""config.model.kernels: the CPU kernels ("cpu") and the plain XLA ones ("xla") compute the
same function and gradient, read and write the same variables, and "auto" on the CPU runs
the CPU kernels.

Tolerances (relative error of each array as a whole): float32 results agree to float32
summation order, < 1e-5 for one layer's values and < 1e-4 for gradients and for the
features of a whole network (53 layers of a ResNet-50 compound the rounding); bfloat16 ones
to bfloat16 rounding, < 3e-2 for one convolution and < 6e-2 through a network (the two
paths round their bfloat16 intermediates at different places, each rounding ~4e-3).
Whole-network gradients are compared as one vector (``assert_grads_close``): the BatchNorm
bias and scale gradients of the early layers are sums over every position with heavy
cancellation, so their own relative error magnifies the rounding of the terms (the stem's
bias gradient of a narrow ResNet-50: 2e-3 in float32, 0.26 in bfloat16).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mecjax import configlib
from mecjax.configlib import ConfigError
from mecjax.models import BatchNorm, get_encoder, resnet18, resnet50
from mecjax.models.norm import _MIN_ROWS
from mecjax.models.resnet import conv

F32_GRAD, F32_VALUE, BF16, BF16_NET = 1e-4, 1e-5, 3e-2, 6e-2


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def assert_trees_close(a, b, tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype, jax.tree_util.keystr(path)
    assert rel(x, y) <= tol, (jax.tree_util.keystr(path), rel(x, y))


def assert_grads_close(a, b, tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
  assert rel(flat(a), flat(b)) < tol, rel(flat(a), flat(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype


# (kernel, stride, input side): every case the ResNets have (3x3 s1, 3x3 s2 even and odd
# input, 1x1 s1, 1x1 s2, the 7x7 s2 stem).
CONV_CASES = [(3, 1, 8), (3, 2, 8), (3, 2, 7), (1, 1, 8), (1, 2, 8), (7, 2, 16)]


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, F32_GRAD), (jnp.bfloat16, BF16)])
@pytest.mark.parametrize("k,stride,side", CONV_CASES)
def test_conv_cpu_and_xla_agree_in_value_and_gradient(k, stride, side, dtype, tol):
  kx, kk, kg = jax.random.split(jax.random.key(k * 100 + stride * 10 + side), 3)
  x = jax.random.normal(kx, (4, side, side, 6)).astype(dtype)
  w = (jax.random.normal(kk, (k, k, 6, 5)) / k).astype(dtype)
  pad = (k - 1) // 2
  out = jax.eval_shape(lambda: conv(x, w, stride, pad, "xla"))
  g = jax.random.normal(kg, out.shape).astype(dtype)

  def run(kernels):
    y, vjp = jax.vjp(lambda x, w: conv(x, w, stride, pad, kernels), x, w)
    return (y, *vjp(g))

  cpu, xla = jax.jit(run, static_argnums=0)("cpu"), jax.jit(run, static_argnums=0)("xla")
  for a, b in zip(cpu, xla):
    assert a.shape == b.shape and a.dtype == b.dtype == dtype
    assert rel(a, b) < tol
  # The plain path is lax.conv_general_dilated.
  ref = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (stride, stride), ((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, w)
  assert rel(xla[0], ref) < 1e-6


@pytest.mark.parametrize("rows", [_MIN_ROWS * 2, 64])   # feature map (CPU sums) / head
def test_batchnorm_cpu_and_xla_agree_train_and_eval(rows):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (rows // 16, 4, 4, 24))
  variables = BatchNorm().init(jax.random.key(0), x, use_running_average=False)
  variables = {"params": {"scale": 1.0 + 0.1 * jnp.arange(24.0), "bias": jnp.arange(24.0)},
               "batch_stats": variables["batch_stats"]}
  g = jax.random.normal(jax.random.key(2), x.shape)

  def run(kernels, eval_mode):
    bn = BatchNorm(use_running_average=eval_mode, kernels=kernels)
    def f(params, x):
      y, upd = bn.apply({**variables, "params": params}, x, mutable=["batch_stats"])
      return y, upd["batch_stats"]
    (y, stats), vjp = jax.vjp(f, variables["params"], x)
    return y, stats, vjp((g, jax.tree.map(jnp.zeros_like, stats)))

  for eval_mode in (False, True):
    cpu = jax.jit(run, static_argnums=(0, 1))("cpu", eval_mode)
    xla = jax.jit(run, static_argnums=(0, 1))("xla", eval_mode)
    assert rel(cpu[0], xla[0]) < F32_VALUE
    assert_trees_close(cpu[1], xla[1], F32_VALUE)   # running statistics
    assert_trees_close(cpu[2], xla[2], F32_GRAD)    # d params, d x
  # Train mode normalises: per-channel mean = bias, std = scale (up to epsilon).
  y = jax.jit(run, static_argnums=(0, 1))("xla", False)[0]
  np.testing.assert_allclose(np.mean(y, axis=(0, 1, 2)), np.arange(24.0), atol=1e-4)


def network_outputs(net, side, kernels, dtype=None, batch=16, x64=False):
  """(variables, features, batch_stats after a train-mode call, gradients of params and
  input) of ``net`` with ``kernels`` on a fixed batch, as a loss sum(features * r); ``x64``:
  the same float32 initial values and inputs, everything cast to float64 (under
  ``jax.enable_x64``), the reference the float32 results are judged by."""
  net = net.clone(kernels=kernels, dtype=dtype)
  x = jax.random.uniform(jax.random.key(3), (batch, side, side, 3), jnp.float32)
  variables = net.init(jax.random.key(0), x)
  r = jax.random.normal(jax.random.key(4), (batch, net.num_features), jnp.float32)
  if x64:
    variables, x, r = jax.tree.map(lambda a: a.astype(jnp.float64), (variables, x, r))

  def loss(params, x):
    y, upd = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                       mutable=["batch_stats"])
    return jnp.sum(y * r.astype(y.dtype)), (y, upd["batch_stats"])

  (_, (y, stats)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      variables["params"], x)
  return variables, y, stats, grads


# Sizes where the last stage still normalises over >= 64 values per channel (fewer makes
# BatchNorm's gradient ill-conditioned, and any two summation orders then disagree). Their
# cost is compilation (53 or 20 layers; running them takes well under a second), which
# narrower or smaller inputs hardly shorten: measured, a ResNet-50 at width 1/16, 32 px,
# batch 4 compiles in ~60% of the time of this one, and its CPU-kernel features drift to
# 1.3e-3 from float64, too close to the 2e-3 bound below.
NETS = {"resnet18_cifar": (lambda: resnet18(cifar_stem=True, width=0.125), 32),
        "resnet50": (lambda: resnet50(width=0.125), 64)}

_OUTPUTS = {}


def outputs(name, kernels, dtype=None):
  """``network_outputs`` of ``NETS[name]``, computed once per module (float64: with
  ``x64``) and shared by the tests below: each is a whole-network compilation. The tests
  that read them share one pytest-xdist worker (``xdist_group``)."""
  key = (name, kernels, jnp.dtype(dtype).name if dtype is not None else None)
  if key not in _OUTPUTS:
    build, side = NETS[name]
    if dtype == jnp.float64:
      with jax.enable_x64(True):
        v, y, s, g = network_outputs(build(), side, kernels, dtype, x64=True)
        _OUTPUTS[key] = jax.tree.map(lambda a: np.asarray(a, np.float64), (v, y, s, g))
    else:
      _OUTPUTS[key] = network_outputs(build(), side, kernels, dtype)
  return _OUTPUTS[key]


def flat64(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


NETWORK_TESTS = pytest.mark.xdist_group("kernels_networks")


# Moved to the slow tier (issue 17: the fast tier's budget): three whole-network
# compilations each (ResNet-50: ~100 s on the CI machine); the per-layer tests above keep
# every stride/kernel case in the fast tier.
@pytest.mark.slow
@NETWORK_TESTS
@pytest.mark.parametrize("name", sorted(NETS))
def test_networks_cpu_and_xla_are_close_to_float64(name):
  # A narrow network's float32 gradient is itself ill-conditioned at a size this test can
  # afford (8-channel stages, batch 16, small last maps: BatchNorm gradients that cancel):
  # measured, a ResNet-50's two float32 gradients are each 2-5e-2 from the float64 gradient
  # of the same network, and the two kernels' float32 results differ by up to 1e-2 (ResNet-18)
  # and 4e-2 (ResNet-50) depending on the XLA build options and thread count; features differ
  # from float64 by up to 5e-4. So each kernel set is judged against float64: a wrong kernel
  # (a transposed tap, a stride-2 phase, a missing BatchNorm term) is off by O(1). The
  # per-layer tests above hold each kernel to float32 rounding.
  v_cpu, y_cpu, s_cpu, g_cpu = outputs(name, "cpu")
  v_xla, y_xla, s_xla, g_xla = outputs(name, "xla")
  # The same variables (names, shapes, initial values) whichever kernels.
  assert_trees_close(v_cpu, v_xla, 0.0)
  assert_trees_close(s_cpu, s_xla, 1e-3)   # running statistics after one train-mode call
  _, y64, _, g64 = outputs(name, "xla", jnp.float64)
  g64 = flat64(g64)
  for y, g in ((y_cpu, g_cpu), (y_xla, g_xla)):
    assert rel(y, y64) < 2e-3
    assert rel(flat64(g), g64) < 0.1, rel(flat64(g), g64)


@pytest.mark.slow   # two bfloat16 whole-network compilations (the float32 one is shared)
@NETWORK_TESTS
def test_networks_agree_in_bfloat16():
  # bfloat16 gradients of a whole network are themselves ~0.3-0.4 (relative) from the
  # float32 ones here, so the kernels must agree in features, and be equally close to the
  # float32 gradient (neither path's rounding worse than the other's by more than 1.5x).
  _, *cpu = outputs("resnet18_cifar", "cpu", jnp.bfloat16)
  _, *xla = outputs("resnet18_cifar", "xla", jnp.bfloat16)
  _, *ref = outputs("resnet18_cifar", "xla")
  assert cpu[0].dtype == jnp.float32
  assert rel(cpu[0], xla[0]) < BF16_NET
  e_cpu, e_xla = rel(flat64(cpu[2]), flat64(ref[2])), rel(flat64(xla[2]), flat64(ref[2]))
  assert e_cpu < 1.5 * e_xla and e_xla < 1.5 * e_cpu, (e_cpu, e_xla)


def test_auto_runs_the_cpu_kernels_on_cpu():
  """At run time on a CPU, 'auto' computes what 'cpu' computes, not what 'xla' does, per
  layer: the stride-2 convolutions (3x3, and 1x1 whose input gradient the CPU kernels
  rewrite as a phase convolution) and a feature-map BatchNorm (blocked sums), values and
  gradients. That whole networks lower to the CPU kernels for the CPU and to the plain ones
  for an accelerator is tests/test_lowering.py's."""
  assert jax.default_backend() == "cpu"
  assert resnet50().kernels == "auto" and BatchNorm().kernels == "auto"
  kx, kg = jax.random.split(jax.random.key(7))
  x = jax.random.normal(kx, (16, 16, 16, 64))

  def conv_run(kernels, k):
    w = jax.random.normal(jax.random.key(k), (k, k, 64, 8)) / k
    y, vjp = jax.vjp(lambda x, w: conv(x, w, 2, (k - 1) // 2, kernels), x, w)
    return (y, *vjp(jax.random.normal(kg, y.shape)))

  bn_vars = BatchNorm().init(jax.random.key(0), x, use_running_average=False)

  def bn_run(kernels, _):
    def f(params, x):
      return BatchNorm(kernels=kernels).apply({**bn_vars, "params": params}, 3 + 2 * x,
                                              use_running_average=False,
                                              mutable=["batch_stats"])[0]
    y, vjp = jax.vjp(f, bn_vars["params"], x)
    return (y, *vjp(x))

  gap = 0.0
  for run, k in ((conv_run, 3), (conv_run, 1), (bn_run, None)):
    auto, cpu, xla = (jax.tree.leaves(jax.jit(run, static_argnums=(0, 1))(kernels, k))
                      for kernels in ("auto", "cpu", "xla"))
    # The same kernels, the same numbers (the plain ones differ by 5e-7 in the 1x1 case).
    assert max(rel(a, b) for a, b in zip(auto, cpu)) < 1e-9, (run.__name__, k)
    gap = max(gap, *(rel(a, b) for a, b in zip(auto, xla)))
  # ... and not the plain ones: their results differ in float32 summation order, most in
  # BatchNorm's scale gradient, a sum with heavy cancellation (measured 5e-2).
  assert gap > 1e-4, gap


def test_config_key_reaches_the_encoder_and_is_checked():
  assert configlib.load("configs/mec_cifar10.py").model.kernels == "auto"
  config = configlib.load("configs/mec_cifar10.py:smoke")
  assert config.model.kernels == "xla"   # the smoke variants compile the plain kernels
  config.model.kernels = "auto"
  assert get_encoder(config.model).kernels == "auto"
  config.model.kernels = "xla"
  assert get_encoder(config.model).kernels == "xla"
  for name in ("vit_small", "resnet18_cifar"):
    config.model.name, config.model.kernels = name, "gpu"
    with pytest.raises(ConfigError, match="config.model.kernels='gpu'"):
      get_encoder(config.model)
