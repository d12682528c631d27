"""Evaluator types by name: ``config.evals`` -> the evaluators a run schedules.

``config.evals`` is a ConfigDict of named entries, each with ``type`` and a cadence
(``every_steps`` or ``every_epochs``). A type is a module ``mecjax.evaluators.<type>``
with ``build(name, cfg, context) -> evaluator | None`` (None: not applicable to this run,
e.g. unlabelled data), or a builder given to ``register`` (tests, notebooks). So a new
evaluator is one new module plus its config entry. An entry whose ``type`` is None, "" or
"none" (as the command line spells it) is off.

Cadence: an entry with neither ``every_*`` set takes ``config.knn.every_*`` (the monitor
cadence the configs set), and with that unset too runs at the last step only; every
evaluator also runs at the last step.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from mecjax import configlib

_REGISTERED: dict[str, Callable] = {}
# Modules of this package that are not evaluator types.
_NOT_TYPES = ("common", "registry", "downstream", "metrics", "finetune")


def register(type_name: str, build: Callable) -> None:
  """Make ``type_name`` a type: ``build(name, cfg, context) -> evaluator | None``."""
  _REGISTERED[type_name] = build


def known_types() -> list[str]:
  here = importlib.import_module("mecjax.evaluators")
  modules = {m.name for m in pkgutil.iter_modules(here.__path__) if m.name not in _NOT_TYPES}
  return sorted(modules | set(_REGISTERED))


def builder(name: str, type_name: str) -> Callable:
  """The ``build`` function of ``type_name``; an unknown type stops naming the entry."""
  if type_name in _REGISTERED:
    return _REGISTERED[type_name]
  if type_name in known_types():
    module = importlib.import_module(f"mecjax.evaluators.{type_name}")
    if hasattr(module, "build"):
      return module.build
  raise configlib.ConfigError(f"config.evals.{name}.type={type_name!r}: expected one of "
                              f"{known_types()}")


def cadence(name: str, cfg, config, steps_per_epoch: int) -> int | None:
  """Steps between runs of ``config.evals.<name>`` (None: at the last step only)."""
  own = cfg.get("every_steps") is not None or cfg.get("every_epochs") is not None
  every = configlib.duration(cfg if own else config.knn, "every", steps_per_epoch)
  if every is not None and every <= 0:
    where = f"config.evals.{name}" if own else "config.knn"
    raise configlib.ConfigError(f"{where}.every_steps / every_epochs resolve to {every} "
                                "steps: expected a positive number")
  return every


def build_all(config, context, steps_per_epoch: int) -> list[tuple]:
  """``[(name, evaluator, every), ...]`` for ``config.evals``, in its order, leaving out
  the entries that are off or not applicable; in name order (a ConfigDict sorts its keys)."""
  out = []
  for name, cfg in config.evals.items():
    if str(cfg.get("type") or "").lower() in ("", "none"):   # --config.evals.X.type=none
      continue
    evaluator = builder(name, cfg.type)(name, cfg, context)
    if evaluator is not None:
      out.append((name, evaluator, cadence(name, cfg, config, steps_per_epoch)))
  return out
