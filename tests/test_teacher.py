"""The EMA teacher read in one place (``mecjax.methods.teacher``): its parameters from the
optax state, its BN statistics from the model state, in a live train state and in a
restored checkpoint; export of the teacher is exactly those two."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from mecjax import checkpoint as ckpt_lib
from mecjax import export, optim
from mecjax.methods import teacher


def _trees(seed):
  rng = np.random.default_rng(seed)
  params = {"encoder": {"conv": {"kernel": rng.normal(size=(3, 3, 3, 4)).astype(np.float32)},
                        "bn": {"scale": rng.normal(size=(4,)).astype(np.float32)}},
            "projector": {"w": rng.normal(size=(4, 2)).astype(np.float32)}}
  stats = {"encoder": {"bn": {"mean": rng.normal(size=(4,)).astype(np.float32),
                              "var": rng.uniform(0.5, 2, size=(4,)).astype(np.float32)}}}
  return params, stats


def _trained_state(momentum=0.9, steps=3):
  """(state, expected EMA params): an sgd + ema_target chain after ``steps`` updates, the
  teacher's statistics set apart from the online ones as a teacher forward leaves them."""
  params, stats = _trees(0)
  tx = optax.chain(optax.sgd(0.1), optim.ema_target(momentum))
  opt_state = tx.init(params)
  want = jax.tree.map(np.copy, params)
  for k in range(steps):
    grads = jax.tree.map(lambda x: np.full_like(x, 0.5 + k), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    want = jax.tree.map(lambda t, p: momentum * t + (1 - momentum) * np.asarray(p), want, params)
  _, target_stats = _trees(1)
  model_state = teacher.init_stats({"batch_stats": stats}, target_stats)
  state = {"step": np.int32(steps), "params": params, "opt_state": opt_state,
           "model_state": model_state}
  return state, want


def _close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=1e-6), a, b)
  assert jax.tree.structure(a) == jax.tree.structure(b)


def test_teacher_of_a_live_state_is_the_ema_params_and_the_teacher_stats():
  state, want = _trained_state()
  found = teacher.of(state)
  _close(found["params"], want)
  assert found["batch_stats"] is state["model_state"][teacher.TEACHER_STATS]
  _close(teacher.params(state), want)

  class Attrs:   # a train state with attributes, as train.TrainState
    opt_state, model_state = state["opt_state"], state["model_state"]
  _close(teacher.of(Attrs)["params"], want)


def test_no_teacher_is_none_and_half_a_teacher_is_refused():
  params, stats = _trees(0)
  plain = {"opt_state": optax.sgd(0.1).init(params), "model_state": {"batch_stats": stats}}
  assert teacher.of(plain) is None and teacher.params(plain) is None
  state, _ = _trained_state()
  no_stats = dict(state, model_state={"batch_stats": stats})
  with pytest.raises(ValueError, match="parameters but no model_state"):
    teacher.of(no_stats)
  with pytest.raises(ValueError, match="BN statistics but no ema_target"):
    teacher.of(dict(plain, model_state=state["model_state"]))


def test_export_of_the_teacher_is_the_ema_params_and_target_stats(tmp_path):
  state, want = _trained_state()
  saver = ckpt_lib.Checkpointer(str(tmp_path), keep=1)
  saver.save(3, state, {}, {"method": "mec", "model": {"name": "resnet18", "width": 1.0}})
  saver.close()
  # The restored checkpoint has no optax types left; the accessor reads it the same.
  restored = ckpt_lib.read_state(str(tmp_path))
  _close(teacher.of(restored)["params"], want)
  params, stats, _ = export.encoder_weights(str(tmp_path), target=True)
  _close(params, want["encoder"])
  _close(stats, state["model_state"][teacher.TEACHER_STATS]["encoder"])
  online, online_stats, _ = export.encoder_weights(str(tmp_path), target=False)
  _close(online, state["params"]["encoder"])
  _close(online_stats, state["model_state"]["batch_stats"]["encoder"])
  assert not np.allclose(params["conv"]["kernel"], online["conv"]["kernel"])


def test_export_refuses_the_teacher_of_a_run_without_one(tmp_path):
  params, stats = _trees(0)
  state = {"step": np.int32(1), "params": params,
           "opt_state": optax.sgd(0.1, momentum=0.9).init(params),
           "model_state": {"batch_stats": stats}}
  saver = ckpt_lib.Checkpointer(str(tmp_path), keep=1)
  saver.save(1, state, {}, {"method": "vicreg", "model": {"name": "resnet18", "width": 1.0}})
  saver.close()
  with pytest.raises(export.ExportError, match="method 'vicreg' keeps no EMA target"):
    export.encoder_weights(str(tmp_path), target=True)


def test_a_loaded_run_restarts_the_teacher_stats_from_the_online_ones():
  _, stats = _trees(0)
  _, other = _trees(1)
  state = teacher.restart_from_online(teacher.init_stats({"batch_stats": stats}, other))
  assert state[teacher.TEACHER_STATS] is stats
  assert teacher.restart_from_online({"batch_stats": stats}) == {"batch_stats": stats}
