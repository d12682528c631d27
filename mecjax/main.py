r"""Command line: ``python -m mecjax.main --config=configs/NAME.py[:VARIANT] --workdir=DIR
[--config.KEY=VALUE ...]``; everything else is ``mecjax.train.run`` (or, as ``config.task``
says, the offline linear probe / fine-tuning of ``mecjax.evaluators``).

Rerunning the same command resumes from the newest checkpoint in DIR that restores (a
damaged newer one is moved aside to ``checkpoints/<step>.damaged``). Exit statuses, each
failure with one line on stderr (README "Preemption and faults"):

  0   the run is complete (also a rerun of a complete run, which does nothing)
  2   bad input: a key that does not exist, a zero or negative learning rate / batch size /
      duration, a missing data path, a truncated or corrupt archive, a split that does not
      exist, a batch that does not split over the devices, a workdir of another model, or a
      workdir another live run is using (the line names its host and pid)
  3   a non-finite loss or parameters (the last checkpoint is kept intact)
  4   a checkpoint could not be written (disk full, I/O error: the previous one is intact),
      or no checkpoint of the workdir can be restored
  75  stopped by SIGTERM, SIGINT or SIGUSR1 after saving a checkpoint at the step it was
      on (``mecjax.preemption.EXIT_PREEMPTED``): rerun the same command to continue
  128+N  killed by a second signal N during that save (the previous checkpoint is intact)
"""

from __future__ import annotations

import logging
import sys

from mecjax import entry  # noqa: F401  (default XLA flags, before JAX starts its backend)
from mecjax.entry import say, setup_logging
from mecjax.tasks import run_task

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, as configs/NAME.py or configs/NAME.py:VARIANT.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, logs.")


def fail(message: str, status: int = 2) -> None:
  say(f"mecjax: error: {message}")
  sys.exit(status)


def main(argv) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}: use --config=... --workdir=... --config.KEY=VALUE")
  if not _WORKDIR.value:
    fail("--workdir is required")
  setup_logging()
  from mecjax import parallel
  parallel.initialize_distributed()
  import jax
  if jax.process_index() != 0:
    logging.getLogger("mecjax").setLevel(logging.WARNING)

  from mecjax import checkpoint, configlib, monitors, preemption
  from mecjax.data.sources import DataError
  try:
    config = _CONFIG.value
    config.get("method")  # a file that failed to load raises only when first read
  except OSError as e:
    fail(_one_line(e))
  try:
    run_task(config, _WORKDIR.value)
  except (configlib.ConfigError, DataError, checkpoint.CheckpointMismatch) as e:
    fail(str(e))
  except monitors.NonFiniteError as e:
    fail(str(e), status=3)
  except checkpoint.CheckpointError as e:
    fail(str(e), status=4)
  except preemption.Preempted as e:
    say(f"mecjax: {e}")
    sys.exit(preemption.EXIT_PREEMPTED)


def _flag_errors(argv):
  """Parse flags; a bad config key, value or file becomes one clear line (exit status 2)."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    from mecjax import configlib
    bad = configlib.unknown_override(argv[1:])
    if bad is not None:
      fail(configlib.unknown_key_message(configlib.base(), bad))
    fail(_one_line(e))


def _one_line(e: Exception) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  if not lines:
    return repr(e)
  if len(lines) > 1 and ("config file" in lines[0] or "Configuration" in lines[0]):
    return f"{lines[0]} {lines[-1][:400]}"   # the config file's own exception, or why not
  return lines[0]


def run_cli() -> None:
  app.run(main, flags_parser=_flag_errors)


if __name__ == "__main__":
  run_cli()
