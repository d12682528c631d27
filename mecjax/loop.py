"""The step loop every task runs: pre-training (``mecjax.train``) and the classifier runs
of the offline evaluations (``mecjax.evaluators.downstream``).

``Loop(...).run()`` does, once for all of them: restore the newest checkpoint that matches
the model fingerprint (``meta``) or initialise; return the last metrics row at once when
the run is already complete; step; fetch the interval's metrics every ``log_every`` steps
(means, and the schedule keys' last value) and stop on a non-finite loss naming the steps
and the last checkpoint; log examples/s and the ETA; run each evaluation at its cadence;
checkpoint every ``checkpoint_every`` steps and at the end (never non-finite parameters);
stop on SIGTERM / SIGINT / SIGUSR1 with a checkpoint of the current step
(``preemption.Preempted``); close the checkpointer and the writer and release the workdir
lock whatever happens.

Order at a step: the interval's metrics, then the evaluations due, then the checkpoint.
So a run whose final checkpoint exists has its last evaluation in metrics.jsonl, and a
rerun of a finished run writes nothing. The loop knows no method, data set or evaluator:
it calls ``train_step(state, batch)``, ``make_input(total_steps)`` and each
``evaluator.run(state)`` (``(key, value)`` pairs).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mecjax import checkpoint as ckpt_lib
from mecjax import metric_writers
from mecjax import monitors
from mecjax import parallel
from mecjax import preemption
from mecjax import workdir as workdir_lib

log = logging.getLogger("mecjax")


class Evaluation(NamedTuple):
  """An evaluator (``run(state)`` yields ``(key, value)``) and its cadence: every ``every``
  steps and at the last step; ``every`` None: at the last step only."""
  name: str
  evaluator: Any
  every: int | None = None

  def due(self, step: int, total_steps: int) -> bool:
    return step == total_steps or bool(self.every) and step % self.every == 0


@dataclasses.dataclass
class Loop:
  """One resumable run of ``train_step`` in ``workdir``.

  Attributes:
    workdir: the run directory (already locked by the caller; released here).
    total_steps, steps_per_epoch, global_batch: the run's length and batch (examples/s,
      epochs in the rows).
    abstract: the state's abstract pytree (``ShapeDtypeStruct`` with shardings) to restore.
    meta: what a checkpoint must match to be resumed (``checkpoint.fingerprint`` and more).
    init: ``init() -> state`` of a fresh run (trained weights merged in by the caller).
    make_input: ``make_input(total_steps) -> iterator`` of global batches with
      ``get_state()`` / ``set_state()`` (saved in each checkpoint).
    train_step: ``train_step(state, batch) -> (state, metrics)``; ``state.step`` and
      ``state.params`` are read.
    mesh: the device mesh (the stop agreement's all-gather).
    log_every, checkpoint_every, keep, stop_check_every: cadences in steps, checkpoints kept.
    evaluations: ``Evaluation``s (or ``(name, evaluator, every)`` tuples), run in order.
    name: prefix of the log lines ("" for pre-training, "linear", "finetune").
    loss_key: the metric the non-finite guard watches.
    schedule_keys: metrics logged as the interval's last value (schedules), not its mean.
    eval_seconds_key: the evaluation row's wall-time key; ``train_seconds_key`` (or None):
      the row's seconds from the start of the loop to the evaluation.
    throughput_in_row: write ``examples_per_sec`` in the rows (it is always logged).
    log_keys: ``{metric: label}`` shown on the progress line after the loss.
  """
  workdir: str
  total_steps: int
  steps_per_epoch: int
  global_batch: int
  abstract: Any
  meta: dict
  init: Callable[[], Any]
  make_input: Callable[[int], Any]
  train_step: Callable
  mesh: Any
  log_every: int
  checkpoint_every: int
  keep: int
  stop_check_every: int
  evaluations: Sequence = ()
  name: str = ""
  loss_key: str = "loss"
  schedule_keys: Sequence[str] = ("lr",)
  eval_seconds_key: str = "eval_seconds"
  train_seconds_key: str | None = None
  throughput_in_row: bool = True
  log_keys: dict = dataclasses.field(default_factory=dict)

  def _say(self, text: str) -> str:
    return f"{self.name} {text}" if self.name else text

  def run(self) -> dict:
    """Train (or resume) to ``total_steps``; returns the last metrics row (process 0; the
    others return what they logged, or ``{}`` for a finished run)."""
    evaluations = [Evaluation(*e) for e in self.evaluations]
    total = self.total_steps
    is_main = parallel.is_main_process()
    checkpointer = ckpt_lib.Checkpointer(self.workdir, self.keep)
    writer = None
    stop = preemption.StopSignals()
    try:
      # ------------------------------------------------------- restore or init
      # The newest checkpoint that restores; damaged newer ones are moved aside.
      latest, state, data_state = checkpointer.restore_newest(self.abstract, self.meta)
      if latest is not None:
        log.info("resumed from %s/%d", checkpointer.directory, latest)
      else:
        state = self.init()
      start_step = int(jax.device_get(state.step))
      if start_step >= total:
        log.info(self._say("run already complete at step %d: nothing to do"), start_step)
        rows = metric_writers.read_metrics(self.workdir) if is_main else []
        return rows[-1] if rows else {}

      train_input = self.make_input(total)
      if data_state is not None:
        train_input.set_state(data_state)
      writer = metric_writers.MetricWriter(self.workdir, enabled=is_main)
      return self._steps(state, start_step, latest, train_input, writer, checkpointer,
                         evaluations, stop)
    finally:
      stop.restore()
      checkpointer.close()
      if writer is not None:
        writer.close()
      workdir_lib.release(self.workdir)

  def _steps(self, state, start_step, latest, train_input, writer, checkpointer,
             evaluations, stop) -> dict:
    total, spe = self.total_steps, self.steps_per_epoch
    all_finite = jax.jit(lambda tree: jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])))
    pending: list[tuple[int, dict]] = []   # device metrics not yet fetched
    last_row: dict = {}
    last_saved = latest
    t_start = time.time()
    timer = {"t": t_start, "steps": 0}

    # ------------------------------------------------------- interval metrics
    def flush() -> None:
      """Fetch pending metrics, stop on a non-finite loss, write the interval's row."""
      nonlocal last_row
      if not pending:
        return
      fetched = jax.device_get([m for _, m in pending])
      steps = [s for s, _ in pending]
      for s, m in zip(steps, fetched):
        if not np.isfinite(m[self.loss_key]):
          raise monitors.NonFiniteError(
              f"non-finite {self.loss_key.replace('_', ' ')} ({m[self.loss_key]}) at step "
              f"{s}, in steps {steps[0]}..{steps[-1]}; last checkpoint: step {last_saved} "
              "(kept intact, nothing saved after it)")
      row = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
      row.update({k: float(fetched[-1][k]) for k in self.schedule_keys if k in fetched[-1]})
      elapsed = time.time() - timer["t"]
      rate = timer["steps"] / max(elapsed, 1e-9) if timer["steps"] else None
      if rate is not None and self.throughput_in_row:
        row["examples_per_sec"] = rate * self.global_batch
      row["epoch"] = steps[-1] / spe
      extra = "".join(f" | {label} {row[k]:.4f}" for k, label in self.log_keys.items()
                      if k in row)
      speed = "" if rate is None else \
          f" | {rate * self.global_batch:.0f} img/s | ETA {_hms((total - steps[-1]) / rate)}"
      log.info(self._say("step %d/%d (epoch %.2f) | loss %.4f%s%s"), steps[-1], total,
               row["epoch"], row[self.loss_key], extra, speed)
      writer.write(steps[-1], row)
      last_row = {"step": steps[-1], **row}
      pending.clear()
      timer.update(t=time.time(), steps=0)

    # ------------------------------------------------------------- checkpoint
    def save(step: int) -> None:
      nonlocal last_saved
      flush()
      if not bool(all_finite(state.params)):
        raise monitors.NonFiniteError(
            f"non-finite parameters at step {step} (loss still finite); last checkpoint: "
            f"step {last_saved} (kept intact)")
      checkpointer.save(step, state, train_input.get_state(), self.meta)
      last_saved = step

    # ------------------------------------------------------------- evaluation
    def evaluate(step: int, due: list[Evaluation]) -> None:
      flush()
      t = time.time()
      row: dict = {}
      for e in due:
        row.update((k, float(v)) for k, v in e.evaluator.run(state))
      row[self.eval_seconds_key] = time.time() - t
      if self.train_seconds_key:
        row[self.train_seconds_key] = t - t_start
      writer.write(step, row)
      last_row.update(row)
      log.info(self._say("eval at step %d: %s"), step,
               ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
      timer.update(t=time.time(), steps=0)

    # ------------------------------------------------------------------- loop
    cadence = ", ".join(f"{e.name} every {e.every or total}" for e in evaluations)
    log.info(self._say("steps %d..%d of %d (%d per epoch, batch %d); logging every %d, "
                       "checkpoint every %d%s"), start_step, total, total, spe,
             self.global_batch, self.log_every, self.checkpoint_every,
             f"; {cadence}" if cadence else "")
    # SIGTERM / SIGINT / SIGUSR1: finish the step, save it, flush, raise Preempted.
    agreed_stop = preemption.StopAgreement(stop, self.mesh, self.stop_check_every)
    stop.install()
    for step in range(start_step + 1, total + 1):
      batch = next(train_input)
      state, metrics = self.train_step(state, batch)
      pending.append((step, metrics))
      timer["steps"] += 1
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        log.info(self._say("first step (compilation included) took %.1fs"),
                 time.time() - timer["t"])
        timer.update(t=time.time(), steps=0)
      if step % self.log_every == 0 or step == total:
        flush()
      due = [e for e in evaluations if e.due(step, total)]
      if due:
        evaluate(step, due)
      if step % self.checkpoint_every == 0 or step == total:
        save(step)
        timer["t"] = time.time()
      signum = agreed_stop(step)
      if signum is not None and step < total:
        if last_saved != step:
          save(step)
        checkpointer.wait()   # the checkpoint is complete before the process ends
        raise preemption.Preempted(signum, step, checkpointer.directory)
    flush()
    return last_row


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"
