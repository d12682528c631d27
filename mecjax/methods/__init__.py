"""Methods, chosen by name (``config.method``): one file per method."""

from __future__ import annotations

from mecjax.configlib import ConfigError
from mecjax.methods.base import LossOutput, Method, RunInfo, SSLNet
from mecjax.methods.mec import MEC

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (MEC,)}


def get_method(config, run: RunInfo) -> Method:
  if config.method not in METHODS:
    raise ConfigError(f"config.method={config.method!r}: expected one of {sorted(METHODS)}")
  return METHODS[config.method](config, run)


__all__ = ["LossOutput", "METHODS", "Method", "RunInfo", "SSLNet", "get_method"]
