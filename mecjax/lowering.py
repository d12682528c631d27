"""The loop's train step built from a config without data, for lowering and measuring it.

``build_step(config)`` gives the jitted step exactly as ``train.run`` composes it
(``train.make_train_step``: on-device augmentation, then ``train.make_update``) with abstract
state and batch, so the step can be exported for a platform this machine lacks
(``export_text``) and inspected (``ops``: the StableHLO convolutions and dot_generals with
their operand types and the source location of each), or compiled and run here
(``concrete_inputs``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mecjax import data as data_lib
from mecjax import evaluators, methods, parallel, train


@dataclasses.dataclass
class Step:
  step: Callable            # jitted (state, batch) -> (state, metrics), state donated
  init: Callable            # init(seed) -> TrainState
  state: Any                # abstract TrainState (ShapeDtypeStructs, replicated)
  batch: dict               # abstract batch {'image', 'label', 'index'} (sharded)
  method: Any
  recipe: Any
  views: int                # views per image, what images/s counts


def build_step(config, global_batch: int | None = None, mesh=None, steps_per_epoch: int = 100,
               num_classes: int = 10) -> Step:
  """The train step of ``config`` for a global batch (default ``config.batch_size``)."""
  global_batch = global_batch or config.batch_size
  mesh = mesh or parallel.make_mesh()
  size = config.data.image_size
  recipe = data_lib.get_recipe(config.aug, size, config.seed)
  run = methods.RunInfo(global_batch, steps_per_epoch, 10 * steps_per_epoch)
  method = methods.get_method(config, run)
  tx, lr, ema = train.make_tx(config, run, method.uses_target, method.frozen_mask())
  probe_tx = evaluators.probe.make_optimizer(config.probe)
  probe_net = evaluators.probe.LinearProbe(num_classes)
  init = train.make_init(method, tx, probe_net, probe_tx, (2, size, size, 3))
  update = train.make_update(method, tx, lr, ema, probe_net, probe_tx,
                             bool(config.probe.enabled))
  step = train.make_train_step(recipe, update, mesh)
  repl, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                       jax.eval_shape(init, config.seed))
  sds = lambda shape, dtype: jax.ShapeDtypeStruct((global_batch,) + shape, dtype,
                                                  sharding=rows)
  if isinstance(recipe, data_lib.augment.HostCropRecipe):   # host crops, one per view
    image = sds((recipe.num_global, size, size, 3), jnp.uint8)
    if recipe.num_local:
      local = recipe.local_size
      image = {"global": image, "local": sds((recipe.num_local, local, local, 3), jnp.uint8)}
  else:   # whole images at their stored side, cropped on the device
    stored = config.data.stored_size or size
    image = sds((stored, stored, 3), jnp.uint8)
  batch = {"image": image, "label": sds((), jnp.int32), "index": sds((), jnp.int32)}
  return Step(step, init, state, batch, method, recipe, recipe.num_views)


def compile_init(s: Step, seed: int = 0):
  """``s.init`` compiled for ``seed``, its state replicated: called with no argument."""
  return jax.jit(s.init, static_argnums=0,
                 out_shardings=s.state.step.sharding).lower(seed).compile()


def concrete_inputs(s: Step, seed: int = 0, init: Callable | None = None):
  """(state, batch) on the devices: initialised state and random uint8 images. ``init``: the
  ``compile_init(s, seed)`` already made, if any."""
  state = (init or compile_init(s, seed))()
  rng = np.random.default_rng(seed)

  def make(a):
    if a.dtype == jnp.uint8:
      x = rng.integers(0, 256, a.shape, dtype=np.uint8)
    else:
      x = rng.integers(0, 10, a.shape).astype(a.dtype)
    return jax.device_put(x, a.sharding)
  return state, jax.tree.map(make, s.batch)


def export(s: Step, platform: str):
  """``jax.export`` of the step for ``platform`` ('cuda', 'tpu', 'cpu')."""
  return jax.export.export(s.step, platforms=[platform])(s.state, s.batch)


def export_text(s: Step, platform: str) -> str:
  """The StableHLO text of the step lowered for ``platform``, with source locations."""
  return export(s, platform).mlir_module()


_TYPES = re.compile(r":\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)[^)]*\)\s*->\s*\(?(tensor<[^>]*>)")
_LOC = re.compile(r"loc\((#loc\d+)\)\s*$")


def _elem(t: str) -> str:
  return t[len("tensor<"):-1].split("x")[-1]


def ops(text: str, kinds=("convolution", "dot_general")) -> list[dict]:
  """Every op of ``kinds`` (StableHLO names: convolution, dot_general, reduce) of a module:
  {'op', 'lhs', 'rhs', 'out' (element types of the first two operands and the first
  result), 'where' (the op's location: its name stack, e.g. ``jit(train_step)/.../SSLNet.
  embed/encoder/conv1/...``, then the source functions and files)}."""
  locs = {}
  for m in re.finditer(r"^(#loc\d+) = loc\((.*)\)$", text, re.M):
    locs[m.group(1)] = m.group(2)

  def resolve(ref: str, depth: int = 0) -> str:
    body = locs.get(ref, "")
    if depth > 20:
      return body
    # callsite(#a at #b) / "name"(#a): keep the quoted names, follow references.
    names = re.findall(r'"([^"]*)"', body)
    refs = re.findall(r"#loc\d+", body)
    return " ".join(names + [resolve(r, depth + 1) for r in refs])

  out = []
  for line in text.splitlines():
    op = next((k for k in kinds if f"stablehlo.{k}(" in line or f"stablehlo.{k} " in line),
              None)
    if op is None:
      continue
    t = _TYPES.search(line)
    if not t:
      continue
    loc = _LOC.search(line)
    out.append({"op": op, "lhs": _elem(t.group(1)), "rhs": _elem(t.group(2)),
                "out": _elem(t.group(3)), "where": resolve(loc.group(1)) if loc else ""})
  return out


def donated_arguments(text: str) -> int:
  """How many arguments of the module's main function are donated (aliased to an output or
  marked as buffer donors)."""
  main = re.search(r"func\.func public @main\((.*?)\)\s*->", text, re.S)
  args = main.group(1) if main else ""
  return len(re.findall(r"tf\.aliasing_output|jax\.buffer_donor", args))


def flops(s: Step, platform: str = "cuda") -> float:
  """FLOPs of one step from XLA's cost analysis of the step lowered for ``platform``
  (the unoptimised HLO: what the network, losses and optimiser compute, before fusion)."""
  lowered = s.step.trace(s.state, s.batch).lower(lowering_platforms=(platform,))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])
