"""Interleaved timing for noisy machines: candidates take turns, round by round, in one
process, and we report per-candidate medians and median per-round ratios."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import jax


def machine_line() -> str:
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  except OSError:
    pass
  import os
  return (f"{model or platform.processor()}, {os.cpu_count()} CPUs; jax {jax.__version__}, "
          f"backend {jax.default_backend()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, reps: int,
                warmup: int = 1) -> dict[str, list[float]]:
  """Seconds per call of each candidate, one list entry per round (the mean of ``reps``)."""
  for fn in candidates.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in candidates}
  for _ in range(rounds):
    for name, fn in candidates.items():
      t = time.perf_counter()
      for _ in range(reps):
        out = fn()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t) / reps)
  return times


def median(xs):
  return statistics.median(xs)


def ratio(times, a, b) -> float:
  """Median over rounds of time(a) / time(b)."""
  return statistics.median(x / y for x, y in zip(times[a], times[b]))
