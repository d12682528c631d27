"""The networks and the loop's whole train step, lowered for GPU and TPU from this CPU host.

``model.kernels`` "auto" must give an accelerator the plain kernels: no ``stablehlo.while``
(a device-host round trip on a GPU, and a fusion barrier) and no optimization barrier. With
``model.dtype`` bfloat16 the network's convolutions and matrix products must take bfloat16
operands while the losses (their products and reductions) stay float32; the train state
must be donated (every leaf aliased to an output or marked a buffer donor).
"""

import jax
import jax.numpy as jnp
import pytest

from mecjax import configlib, lowering
from mecjax.methods import METHODS
from mecjax.models import resnet50

PLATFORMS = ("cuda", "tpu")
# configs/<file>.py for each method
CONFIGS = {"mec": "mec_cifar10", "music": "music_cifar10", "simsiam": "simsiam_cifar10",
           "byol": "byol_cifar10", "barlow_twins": "barlow_twins_cifar10",
           "vicreg": "vicreg_cifar10", "swav": "swav_cifar10", "simclr": "simclr_cifar10"}


def test_every_method_is_covered():
  assert set(CONFIGS) == set(METHODS)


def network_grad_text(net, side: int, platform: str, batch: int = 2) -> str:
  x = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.key(0), x)

  def loss(params, batch_stats, x):
    y, upd = net.apply({"params": params, "batch_stats": batch_stats}, x,
                       mutable=["batch_stats"])
    return jnp.sum(y * y), upd

  f = jax.jit(jax.value_and_grad(loss, has_aux=True))
  return jax.export.export(f, platforms=[platform])(
      variables["params"], variables["batch_stats"], x).mlir_module()


@pytest.mark.parametrize("platform", PLATFORMS)
def test_resnet50_defaults_lower_without_while_loops(platform):
  # resnet50() as the module builds it (kernels "auto"): forward and gradient. At 64 px, not
  # 224: the checks read op types and counts, which the image size does not change.
  text = network_grad_text(resnet50(), 64, platform)
  assert "stablehlo.while" not in text
  assert "optimization_barrier" not in text
  convs = lowering.ops(text, ("convolution",))
  assert len(convs) >= 3 * 53 - 1   # forward, input and weight gradients (not the stem's dx)


def test_the_switch_is_per_lowering_platform():
  # The same module lowered for the CPU gets the CPU kernels (their while loops and
  # barriers); "xla" never does.
  net = resnet50(width=0.125)
  assert "stablehlo.while" in network_grad_text(net, 64, "cpu")
  assert "stablehlo.while" not in network_grad_text(net.clone(kernels="xla"), 64, "cpu")


def step_config(method: str, dtype: str = "bfloat16", spec: str | None = None):
  config = configlib.load(f"configs/{spec or CONFIGS[method]}.py:smoke")
  config.model.dtype = dtype
  return config


def check_step(config, platform: str, global_batch: int = 16) -> str:
  step = lowering.build_step(config, global_batch)
  text = lowering.export_text(step, platform)
  assert "stablehlo.while" not in text
  assert "optimization_barrier" not in text
  # The train state is donated, all of it.
  assert lowering.donated_arguments(text) == len(jax.tree.leaves(step.state))

  ops = lowering.ops(text, ("convolution", "dot_general", "reduce"))
  network = [o for o in ops if "SSLNet" in o["where"] and o["op"] != "reduce"]
  encoder = [o for o in network if "/encoder/" in o["where"]]
  heads = [o for o in network if "/projector/" in o["where"]]
  assert encoder and heads
  if config.model.dtype == "bfloat16":
    for o in encoder + heads:
      assert o["lhs"] == o["rhs"] == "bf16", o
  losses = [o for o in ops if "mecjax/losses/" in o["where"]]
  assert losses, "no op located in mecjax/losses/"
  for o in losses:
    assert o["lhs"] == "f32" and o["out"] == "f32", o
  return text


def test_mec_train_step_bfloat16_lowers_for_cuda():
  check_step(step_config("mec"), "cuda")


# MEC for cuda is test_mec_train_step_bfloat16_lowers_for_cuda (the same export and checks).
EVERY_STEP = [(m, p) for m in sorted(CONFIGS) for p in PLATFORMS if (m, p) != ("mec", "cuda")]


@pytest.mark.slow
@pytest.mark.parametrize("method, platform", EVERY_STEP)
def test_every_method_train_step_lowers(method, platform):
  check_step(step_config(method), platform)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["mec_imagenet", "mec_imagenet_vit"])   # resnet50, vit_small
def test_imagenet_encoders_train_step_lowers(spec):
  config = step_config("mec", spec=spec)
  assert config.model.name in ("resnet50", "vit_small")
  text = check_step(config, "cuda")
  if config.model.name == "resnet50":
    assert lowering.ops(text, ("convolution",))


@pytest.mark.slow
def test_float32_step_keeps_float32():
  text = check_step(step_config("mec", "float32"), "tpu")
  assert "bf16" not in text
