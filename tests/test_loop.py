"""mecjax.loop with a tiny synthetic step function (no network, no data set): resume after
a stop equals an uninterrupted run, the NaN guard, the cadences and the order of
evaluation and checkpoint; the evaluator registry (a type registered here is built from
config.evals and run by the loop at its cadence); the kNN evaluator against knn_top1; the
one gather over eval batches."""

from __future__ import annotations

import json
import os
import signal
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mecjax import configlib
from mecjax import loop as loop_lib
from mecjax import monitors
from mecjax import parallel
from mecjax import preemption
from mecjax import workdir as workdir_lib
from mecjax.metric_writers import read_metrics
from mecjax.data import sources
from mecjax.evaluators import common, knn, probe, registry


@flax.struct.dataclass
class State:
  step: jax.Array
  params: jax.Array


class Batches:
  """Batch i (from 1) is ``[i, i + 0.5]``, or NaN at ``nan_at``; state: batches read."""

  def __init__(self, nan_at=None):
    self.read, self.nan_at = 0, nan_at

  def __next__(self):
    self.read += 1
    value = np.nan if self.read == self.nan_at else float(self.read)
    return np.asarray([value, value + 0.5], np.float32)

  def get_state(self):
    return {"read": self.read}

  def set_state(self, state):
    self.read = int(state["read"])


@jax.jit
def step_fn(state, batch):
  params = state.params * 0.9 + jnp.mean(batch)
  metrics = {"loss": jnp.sum(params) + jnp.mean(batch), "lr": 0.1 * state.step.astype(float)}
  return state.replace(step=state.step + 1, params=params), metrics


def make_loop(workdir, total=10, evaluations=(), nan_at=None, train_step=step_fn, **kw):
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  fresh = lambda: State(step=jnp.zeros([], jnp.int32), params=jnp.ones((3,), jnp.float32))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                          jax.eval_shape(fresh))
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.lock(str(workdir))   # as train.run / downstream.prepare do; the loop releases it
  args = dict(workdir=str(workdir), total_steps=total, steps_per_epoch=4, global_batch=2,
              abstract=abstract, meta={"model": "tiny"},
              init=lambda: jax.device_put(fresh(), repl),
              make_input=lambda total: Batches(nan_at), train_step=train_step, mesh=mesh,
              log_every=2, checkpoint_every=4, keep=5, stop_check_every=1,
              evaluations=evaluations)
  args.update(kw)
  return loop_lib.Loop(**args)


def rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def checkpoints(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(p) for p in os.listdir(d) if p.isdigit()) if os.path.isdir(d) else []


def saved_params(workdir):
  from mecjax import checkpoint as ckpt_lib
  return np.asarray(ckpt_lib.read_state(str(workdir))["params"])


class Recorder:
  """An evaluator that records the steps it ran at and whether a checkpoint of that step
  existed then; yields ``<name>_value`` = sum of the params."""

  def __init__(self, name, workdir):
    self.name, self.workdir, self.steps, self.saved_before = name, str(workdir), [], []

  def run(self, state):
    step = int(state.step)
    self.steps.append(step)
    self.saved_before.append(step in checkpoints(self.workdir))
    yield f"{self.name}_value", float(jnp.sum(state.params))


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
  whole = make_loop(tmp_path / "whole", evaluations=[("rec", Recorder("rec", tmp_path), 3)])
  last = whole.run()

  def stopping_step(state, batch):   # a SIGUSR1 during step 5, as a preemption would send
    if int(state.step) == 4:
      os.kill(os.getpid(), signal.SIGUSR1)
    return step_fn(state, batch)

  stopped = tmp_path / "stopped"
  with pytest.raises(preemption.Preempted) as stop:
    make_loop(stopped, train_step=stopping_step,
              evaluations=[("rec", Recorder("rec", stopped), 3)]).run()
  assert stop.value.step == 5 and checkpoints(stopped) == [4, 5]
  assert os.path.realpath(stopped) not in workdir_lib._HELD   # the lock was released
  again = make_loop(stopped, evaluations=[("rec", Recorder("rec", stopped), 3)]).run()
  np.testing.assert_array_equal(saved_params(stopped), saved_params(tmp_path / "whole"))
  assert checkpoints(stopped)[-1] == 10 and again["rec_value"] == last["rec_value"]
  timing = ("examples_per_sec", "eval_seconds")
  by_step = lambda d: {r["step"]: {k: v for k, v in r.items() if k not in timing}
                       for r in read_metrics(str(d))}
  a, b = by_step(tmp_path / "whole"), by_step(stopped)
  for step in (2, 3, 4, 8, 9, 10):   # intervals the stop did not split: the same rows
    assert a[step] == b[step], step
  assert a[10]["lr"] == pytest.approx(0.9) and a[10]["epoch"] == 2.5   # last value, steps/4


def test_a_finished_run_is_not_run_again(tmp_path):
  rec = Recorder("rec", tmp_path)
  last = make_loop(tmp_path, evaluations=[("rec", rec, None)]).run()
  before = (tmp_path / "metrics.jsonl").read_text()
  rec2 = Recorder("rec", tmp_path)
  again = make_loop(tmp_path, evaluations=[("rec", rec2, None)]).run()
  assert rec2.steps == [] and (tmp_path / "metrics.jsonl").read_text() == before
  assert again["step"] == 10 and again["rec_value"] == last["rec_value"]
  assert os.path.realpath(tmp_path) not in workdir_lib._HELD


def test_cadences_and_evaluation_before_the_final_checkpoint(tmp_path):
  every3, at_end = Recorder("every3", tmp_path), Recorder("end", tmp_path)
  make_loop(tmp_path, evaluations=[("every3", every3, 3), ("end", at_end, None)]).run()
  assert every3.steps == [3, 6, 9, 10] and at_end.steps == [10]
  assert at_end.saved_before == [False]   # evaluated before its step's checkpoint
  assert every3.saved_before == [False, False, False, False]
  assert checkpoints(tmp_path) == [4, 8, 10]
  logged = [r["step"] for r in rows(tmp_path) if "loss" in r]
  assert logged == [2, 3, 4, 6, 8, 9, 10]   # every 2, and flushed before each evaluation
  evals = [r for r in rows(tmp_path) if "every3_value" in r or "end_value" in r]
  assert [r["step"] for r in evals] == [3, 6, 9, 10]
  assert set(evals[-1]) == {"step", "every3_value", "end_value", "eval_seconds"}


def test_a_non_finite_loss_stops_naming_the_steps_and_saves_nothing_after(tmp_path):
  with pytest.raises(monitors.NonFiniteError) as err:
    make_loop(tmp_path, nan_at=7).run()
  msg = str(err.value)
  assert msg.startswith("non-finite loss (nan) at step 7") and "in steps 7..8" in msg
  assert "last checkpoint: step 4" in msg and checkpoints(tmp_path) == [4]
  assert os.path.realpath(tmp_path) not in workdir_lib._HELD

  def classifier_step(state, batch):
    state, metrics = step_fn(state, batch)
    return state, {"linear_loss": metrics["loss"]}

  # A classifier run's guard watches and names its own loss.
  with pytest.raises(monitors.NonFiniteError, match=r"^non-finite linear loss \(nan\) at step 1"):
    make_loop(tmp_path / "lin", nan_at=1, loss_key="linear_loss",
              train_step=classifier_step).run()


def test_non_finite_parameters_are_never_saved(tmp_path):
  @jax.jit
  def blow_up(state, batch):   # finite loss, parameters inf from step 6 on
    params = jnp.where(state.step >= 5, jnp.inf, state.params)
    return state.replace(step=state.step + 1, params=params), {"loss": jnp.mean(batch)}

  with pytest.raises(monitors.NonFiniteError, match="non-finite parameters at step 8"):
    make_loop(tmp_path, train_step=blow_up).run()
  assert checkpoints(tmp_path) == [4]


# ------------------------------------------------------------------ registry


class Tick:
  def __init__(self, offset):
    self.offset, self.steps = offset, []

  def run(self, state):
    self.steps.append(int(state.step))
    yield "tick", float(int(state.step) + self.offset)


def test_a_registered_type_is_built_from_config_evals_and_run_at_its_cadence(tmp_path):
  built = {}

  def build(name, cfg, context):
    built[name] = Tick(offset=cfg.offset)
    return built[name]

  registry.register("tick", build)
  config = configlib.base()
  with config.unlocked():
    config.evals.tick = dict(type="tick", every_epochs=1.0, offset=100)
  config.knn.enabled = False   # the built-in types drop out (and need no data)
  config.probe.enabled = False
  context = common.Context(config=config, train=None, load_eval=lambda: None, num_classes=0,
                           features=None)
  scheduled = registry.build_all(config, context, steps_per_epoch=4)
  assert [(n, e) for n, _, e in scheduled] == [("tick", 4)]   # every_epochs x 4 steps
  make_loop(tmp_path, evaluations=scheduled).run()
  assert built["tick"].steps == [4, 8, 10]
  assert [r["tick"] for r in rows(tmp_path) if "tick" in r] == [104.0, 108.0, 110.0]


TOY_EVALUATOR = '''
"""The steps seen so far, times cfg.scale: an evaluator type that is only this file."""


class Evaluator:
  def __init__(self, scale):
    self.scale, self.seen = scale, 0

  def run(self, state):
    self.seen += 1
    yield "toy_seen", self.seen * self.scale


def build(name, cfg, context):
  return Evaluator(cfg.scale)
'''


def test_a_new_evaluator_is_one_new_module_and_its_config_entry(tmp_path, monkeypatch):
  """A module dropped beside the evaluators (here a folder added to the package's path) is
  a type by its file name; its config.evals entry builds and schedules it, no other edit."""
  import mecjax.evaluators
  folder = tmp_path / "more_evaluators"
  folder.mkdir()
  (folder / "toy_counter.py").write_text(TOY_EVALUATOR)
  monkeypatch.setattr(mecjax.evaluators, "__path__", [*mecjax.evaluators.__path__, str(folder)])
  monkeypatch.delitem(sys.modules, "mecjax.evaluators.toy_counter", raising=False)
  assert "toy_counter" in registry.known_types()
  config = configlib.base()
  with config.unlocked():
    config.evals.toy = dict(type="toy_counter", every_steps=3, scale=0.5)
  config.knn.enabled = False
  config.probe.enabled = False
  context = common.Context(config=config, train=None, load_eval=lambda: None, num_classes=0,
                           features=None)
  scheduled = registry.build_all(config, context, steps_per_epoch=4)
  assert [(n, e) for n, _, e in scheduled] == [("toy", 3)]
  make_loop(tmp_path / "run", evaluations=scheduled).run()
  got = [(r["step"], r["toy_seen"]) for r in rows(tmp_path / "run") if "toy_seen" in r]
  assert got == [(3, 0.5), (6, 1.0), (9, 1.5), (10, 2.0)]   # every 3 steps and the last


def test_registry_cadence_falls_back_to_config_knn_and_unknown_types_stop():
  config = configlib.base()
  cadence = lambda name: registry.cadence(name, config.evals[name], config, 10)
  assert cadence("knn") is None and cadence("probe") is None   # unset: the last step
  config.knn.every_epochs = 2.0
  assert cadence("knn") == 20 and cadence("probe") == 20       # today's monitor cadence
  config.evals.probe.every_steps = 7
  assert cadence("knn") == 20 and cadence("probe") == 7        # an entry overrides it
  config.evals.knn.every_steps = 0
  with pytest.raises(configlib.ConfigError, match="config.evals.knn.every_steps"):
    cadence("knn")
  config.evals.knn.type = "knnn"
  with pytest.raises(configlib.ConfigError,
                     match=r"config.evals.knn.type='knnn': expected one of .*'knn'"):
    registry.builder("knn", "knnn")


# ------------------------------------------------------------------ kNN / probe


def features_of(table):
  return lambda state, source: table[id(source)]


def test_knn_evaluator_equals_knn_top1_on_the_same_features():
  rng = np.random.default_rng(0)
  bank_x, bank_y = rng.normal(size=(90, 16)).astype(np.float32), rng.integers(0, 4, 90)
  query_x, query_y = rng.normal(size=(37, 16)).astype(np.float32), rng.integers(0, 4, 37)
  bank, queries = object(), object()
  table = {id(bank): (bank_x, bank_y), id(queries): (query_x, query_y)}
  state = State(step=jnp.asarray(3), params=None)
  got = dict(knn.Evaluator(features_of(table), bank, queries, num_classes=4, k=7,
                           temperature=0.07).run(state))
  # The monitor's former inputs: global arrays with padded rows marked invalid.
  pad = lambda x, n: np.concatenate([x, x[:n]])
  valid = lambda n, p: np.r_[np.ones(n, bool), np.zeros(p, bool)]
  want = float(knn.knn_top1(pad(bank_x, 6), pad(bank_y, 6), valid(90, 6), pad(query_x, 3),
                            pad(query_y, 3), valid(37, 3), num_classes=4, k=7,
                            temperature=0.07))
  assert got == {"knn_top1": want} and 0 < want < 1


def test_knn_build_reads_config_knn_unless_the_entry_sets_a_field():
  rng = np.random.default_rng(1)
  train = sources.ArraySource(np.zeros((40, 2, 2, 3), np.uint8), rng.integers(0, 2, 40), "ab")
  config = configlib.base()
  config.knn.k, config.knn.max_train_examples = 5, 10
  context = common.Context(config=config, train=train, load_eval=lambda: "queries",
                           num_classes=2, features=None)
  ev = knn.build("knn", config.evals.knn, context)
  assert (ev.k, ev.temperature, len(ev.bank), ev.queries) == (5, 0.1, 10, "queries")
  config.evals.knn.k, config.evals.knn.temperature = 9, 0.5
  ev = knn.build("knn", config.evals.knn, context)
  assert (ev.k, ev.temperature) == (9, 0.5)
  config.evals.knn.k = 0
  with pytest.raises(configlib.ConfigError, match="config.evals.knn: k=0"):
    knn.build("knn", config.evals.knn, context)
  config.knn.enabled = False
  assert knn.build("knn", config.evals.knn, context) is None
  assert probe.build("probe", config.evals.probe,
                     common.Context(config=config, train=train, load_eval=lambda: None,
                                    num_classes=0, features=None)) is None


def test_probe_evaluator_is_the_argmax_accuracy_of_its_logits():
  x = np.eye(4, dtype=np.float32)
  labels = np.asarray([0, 1, 3, 3])
  queries = object()
  ev = probe.Evaluator(features_of({id(queries): (x, labels)}), lambda state, f: f * 2,
                       queries)
  assert dict(ev.run(None)) == {"probe_top1": 0.75}


# ------------------------------------------------------------------ gather


def test_map_batches_covers_every_row_once_in_order_and_drops_the_padding():
  mesh = parallel.make_mesh()
  n = 21   # not a multiple of the batch: the last batch is padded
  images = np.arange(n * 2 * 2 * 3, dtype=np.uint8).reshape(n, 2, 2, 3)
  src = sources.ArraySource(images, np.arange(n) % 3, "abc")
  fn = jax.jit(lambda scale, im: scale * jnp.sum(im.astype(jnp.float32), axis=(1, 2, 3)))
  out, labels = common.map_batches(fn, (2.0,), src, batch_size=8, mesh=mesh)
  np.testing.assert_array_equal(out, 2.0 * images.reshape(n, -1).sum(1))
  np.testing.assert_array_equal(labels, np.arange(n) % 3)


def test_step_memo_computes_once_per_step_and_source():
  calls = []
  memo = common.StepMemo(lambda state, source: calls.append((int(state.step), source)) or
                         len(calls))
  s3, s4 = State(step=jnp.asarray(3), params=None), State(step=jnp.asarray(4), params=None)
  a, b = object(), object()
  assert [memo(s3, a), memo(s3, a), memo(s3, b), memo(s4, a)] == [1, 1, 2, 3]
  assert len(calls) == 3


def test_storage_rule():
  config = configlib.base()
  dcfg = config.data
  assert sources.storage(dcfg) == (True, 32)
  dcfg.stored_size = 48
  assert sources.storage(dcfg) == (True, 48)
  dcfg.image_size, dcfg.in_memory = 224, None
  assert sources.storage(dcfg) == (False, 224)   # large images: lazily, at image_size
  dcfg.in_memory = True
  assert sources.storage(dcfg) == (True, 48)


def test_mid_run_linear_probe_separates_separable_features_and_is_off_by_default():
  from mecjax.evaluators import linear
  rng = np.random.default_rng(2)
  centres = 4.0 * rng.normal(size=(3, 8))
  make = lambda n: (lambda y: ((centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y))(
      rng.integers(0, 3, n))
  train_src, queries = object(), object()
  table = {id(train_src): make(120), id(queries): make(60)}
  ev = linear.MidRunProbe(features_of(table), train_src, queries, num_classes=3, epochs=30,
                          lr=0.1, batch_size=32, seed=0)
  row = dict(ev.run(None))
  assert row["linear_top1"] == 1.0 and row["linear_top5"] == 1.0
  # Labels unrelated to the features: near chance on held-out queries.
  x, y = table[id(queries)]
  table[id(queries)] = (x, rng.permutation(y))
  assert dict(ev.run(None))["linear_top1"] < 0.6

  config = configlib.base()
  context = common.Context(config=config, train=None, load_eval=lambda: None, num_classes=0,
                           features=None)
  config.knn.enabled = config.probe.enabled = False
  assert registry.build_all(config, context, 4) == []          # evals.linear.type unset
  config.evals.knn.type = "None"   # as --config.evals.knn.type=None arrives: off too
  config.knn.enabled = True
  assert registry.build_all(config, context, 4) == []
  config.evals.linear.type = "linear"
  assert registry.build_all(config, context, 4) == []          # unlabelled: not applicable
  config.evals.linear.epochs = 0
  context.num_classes = 3
  with pytest.raises(configlib.ConfigError, match="config.evals.linear: epochs=0"):
    registry.build_all(config, context, 4)
