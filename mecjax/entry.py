"""What every command line does first: the default XLA flags, mecjax's log handler, and the
one-write line each command ends with on stderr.

Imported at the top of each entry point (``mecjax.main``, ``mecjax.evaluate``,
``mecjax.export``) and of nothing else, so the library itself has no import-time side
effect. The flags must be in the environment before JAX starts its XLA backend, which is why
this module imports nothing from JAX.
"""

from __future__ import annotations

import logging
import os
import sys

# CPU speed: XLA's YNNPACK fusions of the BN reductions are slower than XLA's own on x86
# (benchmarks/RESULTS.md); switched off unless the user set the flag themselves or
# MECJAX_DEFAULT_XLA_FLAGS=0. The flag names the CPU backend only: GPU and TPU ignore it.
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", "") and \
    os.environ.get("MECJAX_DEFAULT_XLA_FLAGS", "1") == "1":
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_experimental_ynn_fusion_type=").strip()


def say(line: str) -> None:
  """One line on stderr in one write: N processes of one launch share that stream, and
  ``print`` writes the text and its newline separately where stderr is unbuffered
  (``PYTHONUNBUFFERED=1``), so two processes ending together ran their lines into one."""
  sys.stderr.write(f"{line}\n")
  sys.stderr.flush()


def setup_logging() -> None:
  """mecjax's progress on stdout; other libraries' INFO chatter (orbax, grain) silenced."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").addFilter(_orbax_thread_errors)
  logger = logging.getLogger("mecjax")
  if not logger.handlers:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False


def _orbax_thread_errors(record: logging.LogRecord) -> bool:
  """Drop orbax's error logs with tracebacks: they come from its background save threads,
  whose exception orbax raises again in the main thread, where mecjax.checkpoint turns it
  into the one line the run stops with (a disk-full save would print four tracebacks)."""
  return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)
