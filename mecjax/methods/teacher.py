"""The EMA teacher (target network) of a train state, read in one place.

A teacher has two parts, kept in two places of the train state on purpose:

- its **parameters** live in the optimiser state (``optim.ema_target``, the last
  transformation of the optax chain): the EMA ``target <- m target + (1 - m) params`` is an
  update rule, so it runs inside ``tx.update`` with the new parameters, and the target is
  sharded, donated, checkpointed and restored with the rest of the optimiser state;
- its **BatchNorm statistics** live in the model state under ``TEACHER_STATS``: they are not
  an average of the online statistics but the running statistics of the teacher's own
  forward passes (its BN in train mode on the views), so the method's loss updates them,
  exactly as the online network's forward updates ``batch_stats``.

Checkpoints keep that layout, so ``of`` reads both a live state (``train.TrainState``) and
a restored checkpoint's plain dicts (``checkpoint.read_state``).
"""

from __future__ import annotations

from typing import Any

from mecjax import optim

# Model-state key of the teacher's BatchNorm statistics (with the same module layout as
# ``batch_stats``).
TEACHER_STATS = "target_batch_stats"


def _part(state, name: str):
  return state[name] if isinstance(state, dict) else getattr(state, name)


def params(state) -> Any | None:
  """The teacher's parameters held in ``state``'s optimiser state, or None (no teacher).

  Args:
    state: a train state or a restored checkpoint: anything with ``opt_state`` as an
      attribute or key.
  """
  return optim.target_params(_part(state, "opt_state"))


def of(state) -> dict | None:
  """``{'params', 'batch_stats'}`` of the teacher in ``state`` (a train state or a restored
  checkpoint's dict: ``opt_state`` and ``model_state`` as attributes or keys), or None for
  a method without one. Raises ValueError when only one of the two parts is there."""
  target = params(state)
  stats = _part(state, "model_state").get(TEACHER_STATS)
  if target is None and stats is None:
    return None
  if target is None or stats is None:
    raise ValueError("the train state holds the teacher's "
                     + (f"parameters but no model_state[{TEACHER_STATS!r}]"
                        if stats is None else "BN statistics but no ema_target parameters"))
  return {"params": target, "batch_stats": stats}


def init_stats(model_state: dict, batch_stats) -> dict:
  """``model_state`` with the teacher's statistics set to ``batch_stats``: a new teacher
  starts as a copy of the online network, statistics included (its parameters are copied
  by ``ema_target``'s init)."""
  return {**model_state, TEACHER_STATS: batch_stats}


def restart_from_online(model_state: dict) -> dict:
  """After loading trained online weights (``config.init``): the teacher's statistics
  start as the loaded online ones, as its parameters do. A state without a teacher is
  returned unchanged."""
  if TEACHER_STATS not in model_state:
    return model_state
  return init_stats(model_state, model_state["batch_stats"])
