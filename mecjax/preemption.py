"""Stopping on a signal without losing work: SIGTERM, SIGINT and SIGUSR1 during training
finish the current step, save a checkpoint at that step, flush the metrics and end the run
with ``Preempted`` (``mecjax.main``: exit status ``EXIT_PREEMPTED``, 75).

``StopSignals`` (``install()`` / ``restore()`` around the loop, or a context manager) turns the first of those signals into a
flag and gives the three signals back their default action, so a second one ends the
process at once, whatever it is doing: a checkpoint being written then is a temporary
directory orbax never renamed, the previous one stays the newest (``mecjax.checkpoint``).

Every process must save the same step. One process stops after the step during which the
signal came. Several agree through ``StopAgreement``: every ``every`` steps each process
puts its flag into a tiny all-gather (max over processes) and reads the result of the
*previous* check, which has long finished, so the check never waits for the device queue
to drain; all processes read the same value at the same step and stop together, at most
2 x ``every`` steps after the signal. (JAX's own preemption sync point serves SIGTERM
alone, and only under ``jax.distributed``; the all-gather serves all three signals and one
or many processes alike.)
"""

from __future__ import annotations

import logging
import signal
import threading

import numpy as np

log = logging.getLogger("mecjax")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
EXIT_PREEMPTED = 75   # sysexits EX_TEMPFAIL: "try again later", the rerun resumes


class Preempted(Exception):  # noqa: N818
  """The run stopped on a signal after saving a checkpoint at ``step``."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum, self.step = signum, step
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint "
                     f"{directory}/{step} saved; rerun the same command to resume")


class StopSignals:
  """``with StopSignals() as stop:`` ... ``stop.signum`` (None until a signal came)."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict = {}

  def _handle(self, signum, frame) -> None:
    self.signum = signum
    for s in self._previous:   # a second signal: the default action, at once
      signal.signal(s, signal.SIG_DFL)
    log.warning("%s received: stopping after this step with a checkpoint (a second "
                "signal stops at once, keeping the previous checkpoint)",
                signal.Signals(signum).name)

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():   # notebooks' threads
      return
    for s in SIGNALS:
      # An ignored signal stays ignored: a background job (launch/local.sh's processes)
      # ignores the terminal's Ctrl-C, which its launcher passes on as SIGTERM.
      if signal.getsignal(s) is not signal.SIG_IGN:
        self._previous[s] = signal.signal(s, self._handle)

  def restore(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()

  def __enter__(self) -> StopSignals:
    self.install()
    return self

  def __exit__(self, *exc) -> None:
    self.restore()


class StopAgreement:
  """``agreement(step) -> signum or None``: the same answer in every process at each step."""

  def __init__(self, stop: StopSignals, mesh, every: int):
    import jax
    self.stop, self.every = stop, max(int(every), 1)
    self.multi = jax.process_count() > 1
    self._pending = None
    if self.multi:
      from jax.sharding import NamedSharding, PartitionSpec as P
      from mecjax import parallel
      self._rows = parallel.batch_sharding(mesh)
      self._max = jax.jit(lambda x: x.max(), out_shardings=NamedSharding(mesh, P()))
      self._shape = (jax.device_count(),)
      self._local = jax.local_device_count()

  def __call__(self, step: int) -> int | None:
    if not self.multi:
      return self.stop.signum
    if step % self.every:
      return None
    import jax
    decided = None
    if self._pending is not None:
      decided = int(np.asarray(self._pending.addressable_data(0))) or None
    flag = np.full((self._local,), self.stop.signum or 0, np.int32)
    self._pending = self._max(jax.make_array_from_process_local_data(
        self._rows, flag, self._shape))
    return decided
