r"""BYOL on CIFAR-10 (solo-learn's CIFAR recipe; solo-learn: 92.58% online linear after 1000
epochs).

  python -m mecjax.main --config=configs/byol_cifar10.py --workdir=runs/byol_cifar10 \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

CIFAR ResNet-18; projector Linear(4096)-BN-ReLU-Linear(256); predictor
Linear(4096)-BN-ReLU-Linear(256); EMA target (encoder + projector) with momentum 0.99 -> 1
(cosine, per step); loss L(p1, t2) + L(p2, t1), L = 2 - 2 mean cos; LARS (eta 0.02, biases and
norm parameters excluded) lr 1.0 x batch/256, wd 1e-5, batch 256, 1000 epochs, 10-epoch warm-up
then cosine; "asymmetric" augmentation (crops 0.08-1, jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale
0.2, solarize p=0.2 on view 2, no blur).

Variants:
  smoke: tiny network, 12 steps (CI).
  cpu:   width-0.25 encoder, 1024-wide hidden layers, batch 256 on the shared CIFAR-10,
         6 epochs, lr 0.3 (the short-run sweep's choice).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "byol"
  common.solo_learn_cifar(c)
  c.projector.hidden = (4096,)
  c.projector.out_dim = 256
  c.projector.out_bn = None
  c.predictor.hidden = (4096,)
  c.predictor.out_dim = 256
  c.ema.momentum = 0.99
  c.ema.final_momentum = 1.0
  c.optim.base_lr = 1.0
  c.optim.weight_decay = 1e-5
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.cifar_smoke(c)
  c.projector.hidden = (64,)
  c.projector.out_dim = 32
  c.predictor.hidden = (64,)
  c.predictor.out_dim = 32


def cpu(c):
  common.cifar_cpu(c)
  c.projector.hidden = (1024,)
  c.predictor.hidden = (1024,)
  # The short-run sweep's choice by kNN (one epoch at 0.1 / 0.3 / 1.0: benchmarks/RESULTS.md);
  # the recipe's 1.0 is for 1000 epochs.
  c.optim.base_lr = 0.3


VARIANTS = {"smoke": smoke, "cpu": cpu}
