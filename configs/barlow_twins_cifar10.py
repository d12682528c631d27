r"""Barlow Twins on CIFAR-10 (solo-learn's CIFAR recipe; solo-learn: 92.10% online linear
after 1000 epochs).

  python -m mecjax.main --config=configs/barlow_twins_cifar10.py \
      --workdir=runs/barlow_twins_cifar10 --config.data.path=../shared/data/cifar10-jpeg.tar.gz

CIFAR ResNet-18; projector [Linear(2048)-BN-ReLU] x2 - Linear(2048); loss
0.1 x (sum_i (1 - c_ii)^2 + 0.0051 sum_{i!=j} c_ij^2) on the global batch (solo-learn's CIFAR
scale 0.1; the official ImageNet code uses 1); LARS (eta 0.02, biases and norm parameters
excluded) lr 0.3 x batch/256, wd 1e-4, batch 256, 1000 epochs, 10-epoch warm-up then cosine;
"asymmetric" augmentation (solarize p=0.2 on view 2, no blur).

Variants:
  smoke: tiny network, 12 steps (CI).
  cpu:   width-0.25 encoder, 1024-wide projector, batch 256 on the shared CIFAR-10,
         6 epochs, lr 0.1 (the short-run sweep's choice).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "barlow_twins"
  common.solo_learn_cifar(c)
  c.projector.hidden = (2048, 2048)
  c.projector.out_dim = 2048
  c.projector.out_bn = None
  c.predictor.out_dim = 0
  c.barlow_twins.lambd = 0.0051
  c.barlow_twins.scale = 0.1
  c.optim.base_lr = 0.3
  c.optim.weight_decay = 1e-4
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.cifar_smoke(c)
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64


def cpu(c):
  common.cifar_cpu(c)
  c.projector.hidden = (1024, 1024)
  c.projector.out_dim = 1024
  # The short-run sweep's choice by kNN (one epoch at 0.1 / 0.3 / 1.0, then 0.033:
  # benchmarks/RESULTS.md); the recipe's 0.3 is for 1000 epochs.
  c.optim.base_lr = 0.1


VARIANTS = {"smoke": smoke, "cpu": cpu}
