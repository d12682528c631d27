"""What library code needs to read and refuse config values, below the schema.

``ConfigError`` and ``duration`` live here rather than in ``mecjax.configlib`` because the
schema is assembled from the method registry (each method declares its own block), so
``configlib`` imports ``mecjax.methods``; the methods, models and optimiser, which raise
``ConfigError`` and resolve durations, must then not import ``configlib`` back. Both names
stay reachable as ``configlib.ConfigError`` and ``configlib.duration``.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A config value is wrong; the message names the key and what was expected."""


def duration(cfg, name: str, steps_per_epoch: float, default: int | None = None) -> int | None:
  """Resolve ``cfg.<name>_steps`` or ``cfg.<name>_epochs`` (exactly one may be set) to steps.

  Args:
    cfg: a config block holding ``<name>_steps`` and ``<name>_epochs`` (either may be None).
    name: the duration's stem ("total", "warmup", "queue_start", ...).
    steps_per_epoch: steps of one epoch of the run.
    default: returned when neither key is set.
  """
  steps, epochs = cfg.get(f"{name}_steps"), cfg.get(f"{name}_epochs")
  if steps is not None and epochs is not None:
    raise ConfigError(f"config sets both {name}_steps={steps} and {name}_epochs={epochs}: "
                      "keep one")
  if steps is not None:
    return int(steps)
  if epochs is not None:
    return int(round(epochs * steps_per_epoch))
  return default
