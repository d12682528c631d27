r"""E2MC continued pre-training of a VICReg CIFAR-10 checkpoint (ours: the ``cpu`` variant).

  # the base (once):
  python -m mecjax.main --config=configs/vicreg_cifar10.py:cpu \
      --workdir=runs/vicreg_cifar10_cpu --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  # + E2MC, and the "continued" ablation (same run without E2MC):
  python -m mecjax.main --config=configs/e2mc_vicreg_cifar10.py --workdir=runs/e2mc_vicreg \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  python -m mecjax.main --config=configs/e2mc_vicreg_cifar10.py:continued \
      --workdir=runs/continued_vicreg --config.data.path=../shared/data/cifar10-jpeg.tar.gz

VICReg loss plus E2MC on the raw expander output, sigmoid squash, beta 1000, gamma 100 (the
paper's VICReg setting); 10 epochs at 0.01 x VICReg's learning rate (constant), batch 512,
encoder and expander from ``config.init.workdir`` (default runs/vicreg_cifar10_cpu).

Variants: ``smoke`` (CI: from runs/vicreg_cifar10_smoke), ``short`` (1 epoch),
``continued`` (no E2MC); they compose: ``:short,continued``.
"""

import os

from mecjax import configlib


def get_config(arg: str | None = None):
  return configlib.e2mc_cifar(os.path.join(os.path.dirname(__file__), "vicreg_cifar10.py"),
                              arg, beta=1000.0, gamma=100.0, transform="sigmoid")


VARIANTS = configlib.E2MC_CIFAR_VARIANTS
