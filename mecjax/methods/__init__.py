"""Methods, chosen by name (``config.method``): one file per family of methods.

``METHODS`` is found, not listed: every ``Method`` subclass that sets its own ``name`` in a
module of this package is the method of that name, so a new method is one new file (its
class, its ``defaults()`` block) and a config that names it.
"""

from __future__ import annotations

import importlib
import pkgutil

from mecjax.configvalues import ConfigError
from mecjax.methods.base import LossOutput, Method, RunInfo, SSLNet
from mecjax.methods.regularizers import REGULARIZERS
from mecjax.methods import teacher   # teacher.of(state): the EMA teacher's params + stats


def discover() -> dict[str, type[Method]]:
  """``{name: class}`` of every ``Method`` subclass with its own ``name`` in the modules of
  this package (the folders of its ``__path__``), in name order. Two classes of one name
  stop with one line naming both."""
  found: dict[str, type[Method]] = {}
  for info in pkgutil.iter_modules(__path__):
    module = importlib.import_module(f"{__name__}.{info.name}")
    for cls in vars(module).values():
      if (isinstance(cls, type) and issubclass(cls, Method) and cls is not Method
          and cls.__module__ == module.__name__ and "name" in vars(cls)):
        if cls.name in found:
          raise ValueError(f"method name {cls.name!r} is taken by {found[cls.name].__module__}."
                           f"{found[cls.name].__name__} and by {module.__name__}.{cls.__name__}")
        found[cls.name] = cls
  return dict(sorted(found.items()))


METHODS: dict[str, type[Method]] = discover()


def config_blocks() -> dict[str, dict]:
  """``{key: defaults}``: the config block of every registered method (``METHODS``) and
  regulariser (``REGULARIZERS``) that declares one (``Method.defaults``), under its registry
  name. ``configlib.base()`` adds them to the schema. Two owners may not declare the same
  block (one line names both)."""
  blocks, owners = {}, {}
  for kind, registry in (("method", METHODS), ("regularizer", REGULARIZERS)):
    for name, cls in registry.items():
      defaults = cls.defaults()
      if defaults is None:
        continue
      if name in blocks:
        raise ValueError(f"config block {name!r} is declared by {owners[name]} and by "
                         f"{kind} {cls.__name__}: one owner per block")
      blocks[name], owners[name] = defaults, f"{kind} {cls.__name__}"
  return blocks


def get_method(config, run: RunInfo) -> Method:
  if config.method not in METHODS:
    raise ConfigError(f"config.method={config.method!r}: expected one of {sorted(METHODS)}")
  return METHODS[config.method](config, run)


__all__ = ["LossOutput", "METHODS", "Method", "REGULARIZERS", "RunInfo", "SSLNet",
           "config_blocks", "get_method", "teacher"]
