"""Checkpoints: orbax CheckpointManager under ``DIR/checkpoints/<step>``.

Each checkpoint holds the whole train state (params, BN statistics, optimiser state with the
EMA target, probe, step, RNG), the data iterator's state and a ``meta`` record of what model
it belongs to. orbax writes into a temporary directory and renames it when complete, so a
write killed half-way leaves the previous checkpoint as the newest one; leftover temporary
directories are removed at start-up. Resuming into a workdir whose checkpoint was written by
a different model stops with one line naming what differs.

A checkpoint that cannot be restored (array files truncated or missing, metadata unreadable)
is named in one line and moved aside to ``checkpoints/<step>.damaged`` (never deleted; orbax
ignores the name), and the run resumes from the newest one that restores
(``Checkpointer.restore_newest``); when none does the run stops with one line and moves
nothing. A failed write (disk full, an I/O error, in orbax's background thread or not)
stops with one line (``CheckpointError``); the previous checkpoint is untouched, because
orbax deletes old checkpoints only after a new one is complete.
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


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, or no checkpoint of the workdir restores."""


DAMAGED_SUFFIX = ".damaged"


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def fingerprint(config, params) -> dict:
  """What must match for a checkpoint to be resumed: method, network config, param shapes."""
  shapes = sorted((jax.tree_util.keystr(path), tuple(leaf.shape))
                  for path, leaf in jax.tree_util.tree_leaves_with_path(params))
  digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
  return {"method": config.method, "model": config.model.to_dict(),
          "projector": config.projector.to_dict(), "predictor": config.predictor.to_dict(),
          "param_shapes": digest}


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
    self._writing: int | None = None      # the step of a save not known to be complete
    self._complete = self.manager.latest_step()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _write_error(self, e: Exception) -> CheckpointError:
    previous = (f"the newest complete checkpoint, step {self._complete}, is intact"
                if self._complete is not None else "no earlier checkpoint exists")
    return CheckpointError(f"checkpoint of step {self._writing} could not be written in "
                           f"{self.directory} ({_one_line(e)}); {previous}: free space or "
                           "fix the file system, then rerun the same command")

  def _settled(self) -> None:
    """The pending save (if any) finished without an error."""
    if self._writing is not None:
      self._complete, self._writing = self._writing, None

  def save(self, step: int, state, data_state: dict, meta: dict) -> None:
    try:
      # orbax first waits for the previous save: its error, if any, surfaces here.
      self.manager.wait_until_finished()
      self._settled()
      self._writing = step
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # noqa: BLE001 - any failed write: one line, previous kept
      raise self._write_error(e) from e

  def restore_newest(self, abstract_state, meta: dict | None):
    """(step, state, data_state) of the newest checkpoint that restores (checked against
    ``meta`` first, unless None), or (None, None, None) when there is none. Damaged newer
    ones are moved aside; ``CheckpointError`` when every checkpoint is damaged."""
    import jax
    steps = sorted(self.manager.all_steps(), reverse=True)
    failures = []
    found = (None, None, None)
    for step in steps:
      try:
        if meta is not None:
          saved = self.manager.restore(step, args=ocp.args.Composite(
              meta=ocp.args.JsonRestore()))["meta"]
        else:
          saved = None
      except Exception as e:  # noqa: BLE001 - unreadable metadata: a damaged checkpoint
        failures.append((step, e))
      else:
        if saved is not None:
          self._check(step, saved, meta)   # another model: CheckpointMismatch, not damage
        try:
          found = (step, *self.restore(step, abstract_state))
          break
        except Exception as e:  # noqa: BLE001 - truncated / missing array files
          failures.append((step, e))
      log.warning("checkpoint %s/%d cannot be restored (%s)", self.directory, step,
                  _one_line(failures[-1][1]))
    chosen = found[0]
    if jax.process_count() > 1:   # every process must resume from the same step
      from jax.experimental import multihost_utils
      everywhere = multihost_utils.process_allgather(np.int64(-1 if chosen is None else chosen))
      if len(set(np.asarray(everywhere).tolist())) > 1:
        raise CheckpointError(f"the processes restored different checkpoints of "
                              f"{self.directory} ({sorted(set(everywhere.tolist()))}): is it "
                              "on a file system every host sees alike?")
    if steps and chosen is None:
      raise CheckpointError(
          f"no checkpoint in {self.directory} can be restored: "
          + "; ".join(f"step {s}: {_one_line(e)}" for s, e in failures)
          + " (nothing moved; move the directory aside to start afresh)")
    if failures:
      if jax.process_index() == 0:
        for step, _ in failures:
          aside = _aside(self.directory, step)
          os.rename(os.path.join(self.directory, str(step)), aside)
          log.warning("checkpoint step %d is damaged: moved to %s; resuming from step %d",
                      step, aside, chosen)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("mecjax: damaged checkpoints moved aside")
      self.manager.reload()
    self._complete = chosen
    return found

  def check_compatible(self, step: int, meta: dict) -> None:
    saved = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    self._check(step, saved["meta"], meta)

  def _check(self, step: int, saved: dict, meta: dict) -> None:
    # Compared as stored: JSON reads a tuple of the config back as a list.
    diffs = _differences(saved, json.loads(json.dumps(meta)))
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
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001 - a failed background write: one line
      raise self._write_error(e) from e
    self._settled()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001 - the write error above is the one to report
        if self._writing is None:
          raise


def _aside(directory: str, step: int) -> str:
  """``checkpoints/<step>.damaged`` (``.damaged.2``, ... when that is taken)."""
  base = os.path.join(directory, f"{step}{DAMAGED_SUFFIX}")
  path, n = base, 1
  while os.path.exists(path):
    n += 1
    path = f"{base}.{n}"
  return path


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
