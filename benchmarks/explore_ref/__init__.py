"""Frozen copy of mecjax/models/{norm,resnet,heads}.py at commit 761c14f (before the CPU
speed work): the reference for parity checks and in-process A/B timing."""
