"""Methods, chosen by name (``config.method``): one file per family of methods."""

from __future__ import annotations

from mecjax.configlib import ConfigError
from mecjax.methods.base import LossOutput, Method, RunInfo, SSLNet
from mecjax.methods.mec import MEC
from mecjax.methods.music import MUSIC
from mecjax.methods.redundancy import BarlowTwins, VICReg
from mecjax.methods.siamese import BYOL, SimSiam
from mecjax.methods.simclr import SimCLR
from mecjax.methods.swav import SwAV

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (MEC, MUSIC, SimSiam, BYOL, BarlowTwins, VICReg, SwAV, SimCLR)}


def get_method(config, run: RunInfo) -> Method:
  if config.method not in METHODS:
    raise ConfigError(f"config.method={config.method!r}: expected one of {sorted(METHODS)}")
  return METHODS[config.method](config, run)


__all__ = ["LossOutput", "METHODS", "Method", "RunInfo", "SSLNet", "get_method"]
