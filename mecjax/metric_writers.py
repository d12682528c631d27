"""Scalars out: ``DIR/metrics.jsonl`` (one flat JSON object of numbers per line, with
``step``; appended to on resume, never rewritten) and TensorBoard event files.

TensorBoard goes through clu's summary writer when TensorFlow is already loaded (tfds by
name loads it); otherwise the events are written with the ``tensorboard`` package's own
TF-free event writer. Both produce the same ``events.out.tfevents.*`` files under
``DIR/tensorboard``. TensorFlow is never imported just to write scalars: clu's writers
import it, which costs about 5 s of CPU at every start (and training must run where it is
not installed: local folders, the GPU image). Only process 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

log = logging.getLogger(__name__)


class _TensorboardEvents:
  """Scalar summaries as a TensorBoard event file, written with ``tensorboard``'s record
  framing over a plain local file. (Its EventFileWriter opens files through
  ``tensorboard.compat.tf``, which imports TensorFlow whenever it is installed.)"""

  def __init__(self, logdir: str):
    import socket
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self._writer = RecordWriter(open(os.path.join(logdir, name), "wb"))
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _add(self, event) -> None:
    self._writer.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: dict) -> None:
    values = [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._add(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                    summary=self._summary_pb2.Summary(value=values)))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def _tensorboard_writer(logdir: str):
  # TensorFlow only writes summaries here: keep its start-up banner and oneDNN kernels off.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  if "tensorflow" in sys.modules:   # already paid for: clu's writer (it needs TensorFlow)
    from clu import metric_writers
    return metric_writers.SummaryWriter(logdir)
  try:
    return _TensorboardEvents(logdir)
  except ImportError:
    log.warning("neither TensorFlow (clu) nor tensorboard is installed: no TensorBoard "
                "events, metrics.jsonl only")
    return None


def _number(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf literals


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(self.path, "a", encoding="utf-8")
      self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _number(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.write_scalars(int(step), {k: float(v) for k, v in scalars.items()})

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict]:
  """Rows of ``workdir/metrics.jsonl``; for a step logged twice (a resumed run) the last row
  wins, in step order."""
  rows = {}
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
  return [rows[s] for s in sorted(rows)]
