"""Checkpoints: orbax CheckpointManager under ``DIR/checkpoints/<step>``.

Each checkpoint holds the whole train state (params, BN statistics, optimiser state with the
EMA target, probe, step, RNG), the data iterator's state and a ``meta`` record of what model
it belongs to. orbax writes into a temporary directory and renames it when complete, so a
write killed half-way leaves the previous checkpoint as the newest one; leftover temporary
directories are removed at start-up. Resuming into a workdir whose checkpoint was written by
a different model stops with one line naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):  # noqa: N818
  """The workdir holds a checkpoint of a different model."""


def fingerprint(config, params) -> dict:
  """What must match for a checkpoint to be resumed: method, network config, param shapes."""
  shapes = sorted((jax.tree_util.keystr(path), tuple(leaf.shape))
                  for path, leaf in jax.tree_util.tree_leaves_with_path(params))
  digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
  return {
      "method": config.method,
      "model": config.model.to_dict(),
      "projector": {k: list(v) if isinstance(v, tuple) else v
                    for k, v in config.projector.to_dict().items()},
      "predictor": {k: list(v) if isinstance(v, tuple) else v
                    for k, v in config.predictor.to_dict().items()},
      "param_shapes": digest,
  }


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(saved) | set(wanted)):
    a, b = saved.get(key), wanted.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    # The compute dtype and the kernels (model.kernels) may change on resume: same parameters.
    elif a != b and key not in ("dtype", "kernels"):
      out.append(f"{prefix}{key}: checkpoint {a!r}, config {b!r}")
  return out


class Checkpointer:
  """Save / restore the train state with orbax, keeping the last ``keep`` checkpoints."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True,
                                           enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)))

  def check_compatible(self, step: int, meta: dict) -> None:
    saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    diffs = _differences(saved["meta"], meta)
    if diffs:
      raise CheckpointMismatch(
          f"workdir checkpoint {self.directory}/{step} belongs to a different model "
          f"({'; '.join(diffs)}): use a new --workdir, or the config it was trained with")

  def restore(self, step: int, abstract_state):
    """(state, data_state) of checkpoint ``step``, placed as ``abstract_state`` says."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _read_only_manager(run_dir: str) -> ocp.CheckpointManager:
  from mecjax.configlib import ConfigError
  directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
  if not os.path.isdir(directory):
    raise ConfigError(f"{run_dir!r} holds no checkpoints/ directory: not a mecjax run "
                      "directory, or its run has not saved a checkpoint yet")
  absl_log = logging.getLogger("absl")   # orbax warns that read-only means read-only
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)
  try:
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True))
  finally:
    absl_log.setLevel(level)
  if manager.latest_step() is None:
    raise ConfigError(f"{directory} holds no complete checkpoint")
  return manager


def read_meta(run_dir: str, step: int | None = None) -> dict:
  """The ``meta`` record (method, model, heads) of a run's checkpoint."""
  manager = _read_only_manager(run_dir)
  step = manager.latest_step() if step is None else step
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def read_state(run_dir: str, step: int | None = None) -> dict:
  """The train state of a run's checkpoint as host (numpy) trees, without knowing its
  structure beforehand: ``{'params', 'model_state', 'opt_state', ..., 'meta', 'step',
  'directory'}``. ``step`` None: the latest."""
  from mecjax.configlib import ConfigError
  manager = _read_only_manager(run_dir)
  steps = manager.all_steps()
  step = manager.latest_step() if step is None else step
  if step not in steps:
    raise ConfigError(f"{run_dir!r} has no checkpoint of step {step} (it has {sorted(steps)})")
  # Restore every array whole onto this process's first device: the checkpoint may come
  # from another device count or process count, which a target-less restore refuses.
  from etils import epath
  tree = ocp.StandardCheckpointHandler().metadata(
      epath.Path(manager.directory) / str(step) / "state")
  tree = getattr(tree, "item_metadata", tree)
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                          tree)
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  manager.close()
  state = jax.tree.map(np.asarray, dict(out["state"]))
  return {**state, "meta": out["meta"], "step": step, "directory": manager.directory}
