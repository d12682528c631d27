"""Initialise a new run from trained weights (``config.init``): continued pre-training
(E2MC), and every evaluation that starts from a pre-trained encoder.

Two sources:
- ``init.workdir``: a mecjax run directory; its latest checkpoint (or ``init.step``), of any
  method. The encoder must have the same shapes; each head (projector, predictor /
  prototypes) is taken when ``init.heads`` and the checkpoint has it with the same shapes;
  the BN statistics come with their modules, and method state such as SwAV's queue when the
  method is the same.
- ``init.torch``: a PyTorch checkpoint in torchvision key layout (the VICReg, SwAV and
  SimSiam releases, with their prefixes; ``mecjax.torch_port``). torch is needed only here.

What was loaded, left at its initialisation or not used is logged. A teacher (EMA target)
starts as a copy of the loaded online weights.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from mecjax import checkpoint as ckpt_lib
from mecjax.configlib import ConfigError
from mecjax.methods import teacher

log = logging.getLogger("mecjax")


def requested(config) -> bool:
  init = config.init
  if init.workdir and init.torch:
    raise ConfigError(f"config.init.workdir={init.workdir!r} and config.init.torch="
                      f"{init.torch!r}: set one source of initial weights, not both")
  if init.required and not (init.workdir or init.torch):
    raise ConfigError(f"config.init.workdir / config.init.torch: config {config.method!r} "
                      "continues trained weights; name the run directory or PyTorch "
                      "checkpoint to start from")
  return bool(init.workdir or init.torch)


def _shapes(tree) -> dict:
  return {jax.tree_util.keystr(p): tuple(np.shape(x))
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _same_shapes(a, b) -> bool:
  return _shapes(a) == _shapes(b)


def _shape_differences(ours, theirs, limit: int = 4) -> str:
  a, b = _shapes(ours), _shapes(theirs)
  diffs = [f"{k}: ours {a.get(k)}, checkpoint {b.get(k)}" for k in sorted(set(a) | set(b))
           if a.get(k) != b.get(k)]
  more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
  return "; ".join(diffs[:limit]) + more


def from_run(run_dir: str, step: int | None, params, model_state, *, heads: bool,
             same_method: bool) -> tuple[dict, dict, list[str]]:
  """Merge the weights of run ``run_dir`` into ``params`` / ``model_state`` (host trees).

  Returns (params, model_state, notes)."""
  src = ckpt_lib.read_state(run_dir, step)
  params, model_state = dict(params), dict(model_state)
  theirs_p, theirs_s = src["params"], src["model_state"]
  stats = dict(model_state.get("batch_stats", {}))
  their_stats = theirs_s.get("batch_stats", {})
  notes = [f"from {src['directory']}/{src['step']} ({src['meta'].get('method')} run)"]
  for module in params:
    if module != "encoder" and not heads:
      notes.append(f"{module}: left at initialisation (config.init.heads False)")
      continue
    mine = (params[module], stats.get(module, {}))
    if module not in theirs_p:
      if module == "encoder":
        raise ConfigError(f"config.init.workdir={run_dir!r}: checkpoint has no encoder")
      notes.append(f"{module}: left at initialisation (not in the checkpoint)")
      continue
    theirs = (theirs_p[module], their_stats.get(module, {}))
    if not _same_shapes(mine, theirs):
      if module == "encoder":
        raise ckpt_lib.CheckpointMismatch(
            f"config.init.workdir={run_dir!r}: the checkpoint's encoder differs from "
            f"config.model ({_shape_differences(mine, theirs)})")
      notes.append(f"{module}: left at initialisation (shapes differ: "
                   f"{_shape_differences(mine, theirs, 2)})")
      continue
    params[module] = theirs[0]
    if module in stats:
      stats[module] = theirs[1]
    notes.append(f"{module}: loaded")
  model_state["batch_stats"] = stats
  if same_method:
    for key, value in theirs_s.items():
      if key not in ("batch_stats", teacher.TEACHER_STATS) and key in model_state and \
          _same_shapes(model_state[key], value):
        model_state[key] = value
        notes.append(f"state {key}: loaded")
  return params, model_state, notes


def from_torch(path: str, params, model_state, *, heads: bool):
  """Merge a PyTorch checkpoint into ``params`` / ``model_state`` (host trees)."""
  from mecjax import torch_port
  state = torch_port.load_state_dict(path)
  parts = torch_port.split_release(state)
  stats = model_state.get("batch_stats", {})
  params, stats, report = torch_port.import_into(params, stats, parts, heads=heads)
  model_state = dict(model_state, batch_stats=stats)
  return params, model_state, [f"from {path}: {report.summary()}"]


def initialize(config, method, params, model_state) -> tuple[dict, dict]:
  """(params, model_state) with the weights ``config.init`` names merged in (host arrays);
  an EMA teacher's statistics start as the loaded online ones."""
  init = config.init
  params, model_state = jax.device_get((params, model_state))
  if init.workdir:
    if not os.path.isdir(init.workdir):
      raise ConfigError(f"config.init.workdir={init.workdir!r} does not exist: train the base "
                        "run there first, or point the key at a mecjax run directory")
    params, model_state, notes = from_run(
        init.workdir, init.step, params, model_state, heads=init.heads,
        same_method=_run_method(init.workdir) == config.method)
  else:
    if not os.path.isfile(init.torch):
      raise ConfigError(f"config.init.torch={init.torch!r} is not a file")
    params, model_state, notes = from_torch(init.torch, params, model_state,
                                            heads=init.heads)
  model_state = teacher.restart_from_online(model_state)
  params = method.project_params(params)
  for note in notes:
    log.info("init: %s", note)
  return params, model_state


def _run_method(run_dir: str) -> str | None:
  try:
    return ckpt_lib.read_meta(run_dir)["method"]
  except (FileNotFoundError, KeyError, ConfigError):
    return None
