"""``config.task`` -> the module whose ``run(config, workdir)`` does it.

The command line (``mecjax.main``), the notebooks and the tests dispatch a config through
``run_task``; the module is imported only when chosen, so pre-training never imports the
offline evaluations.
"""

from __future__ import annotations

import importlib

from mecjax import configlib

TASKS = {"pretrain": "mecjax.train", "linear": "mecjax.evaluators.linear",
         "finetune": "mecjax.evaluators.finetune"}


def run_task(config, workdir: str) -> dict:
  """``run(config, workdir)`` of the module ``config.task`` names; returns its last metrics."""
  if config.task not in TASKS:
    raise configlib.ConfigError(f"config.task={config.task!r}: expected one of "
                                f"{sorted(TASKS)}")
  return importlib.import_module(TASKS[config.task]).run(config, workdir)
