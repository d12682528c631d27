r"""VICReg on CIFAR-10 (solo-learn's CIFAR recipe; solo-learn: 92.07% online linear after 1000
epochs).

  python -m mecjax.main --config=configs/vicreg_cifar10.py --workdir=runs/vicreg_cifar10 \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

CIFAR ResNet-18; expander [Linear(2048)-BN-ReLU] x2 - Linear(2048); loss 25 x invariance +
25 x variance + 1 x covariance (the official form, std terms averaged over the two views);
LARS (eta 0.02, biases and norm parameters excluded) lr 0.3 x batch/256, wd 1e-4, batch 256,
1000 epochs, 10-epoch warm-up then cosine; crops 0.2-1, jitter 0.4/0.4/0.2/0.1 p=0.8,
grayscale 0.2, solarize p=0.1 on both views, no blur.

Variants:
  smoke: tiny network, 12 steps (CI).
  cpu:   width-0.25 encoder, 1024-wide expander, batch 256 on the shared CIFAR-10.
"""

from mecjax import configlib


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "vicreg"
  configlib.solo_learn_cifar(c)
  c.projector.hidden = (2048, 2048)
  c.projector.out_dim = 2048
  c.projector.out_bn = None
  c.predictor.out_dim = 0
  c.vicreg.sim_weight = 25.0
  c.vicreg.var_weight = 25.0
  c.vicreg.cov_weight = 1.0
  c.aug.crop_scale = (0.2, 1.0)
  c.aug.solarize_prob = (0.1, 0.1)
  c.optim.base_lr = 0.3
  c.optim.weight_decay = 1e-4
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  configlib.cifar_smoke(c)
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64


def cpu(c):
  configlib.cifar_cpu(c, epochs=3.6)
  c.projector.hidden = (1024, 1024)
  c.projector.out_dim = 1024


VARIANTS = {"smoke": smoke, "cpu": cpu}
