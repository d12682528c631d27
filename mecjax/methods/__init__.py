"""Methods, chosen by name (``config.method``): one file per family of methods."""

from __future__ import annotations

from mecjax.configvalues import ConfigError
from mecjax.methods.base import LossOutput, Method, RunInfo, SSLNet
from mecjax.methods.mec import MEC
from mecjax.methods.music import MUSIC
from mecjax.methods.redundancy import BarlowTwins, VICReg
from mecjax.methods.regularizers import REGULARIZERS
from mecjax.methods.siamese import BYOL, SimSiam
from mecjax.methods.simclr import SimCLR
from mecjax.methods.swav import SwAV
from mecjax.methods import teacher   # teacher.of(state): the EMA teacher's params + stats

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (MEC, MUSIC, SimSiam, BYOL, BarlowTwins, VICReg, SwAV, SimCLR)}


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
