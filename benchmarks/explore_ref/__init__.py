"""Frozen copy of mecjax/models/{norm,resnet,heads}.py before the CPU speed work (norm.py and
resnet.py as of 761c14f; heads.py with only the later ConfigError message change): the
reference for benchmarks/explore_parity.py and the in-process A/B timings (explore_ab.py,
explore_backbone.py, explore_bn.py)."""
