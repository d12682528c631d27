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
  cpu:   width-0.25 encoder, 1024-wide expander, batch 256 on the shared CIFAR-10, 6 epochs;
         the recipe's lr 0.3 is the short-run sweep's choice too (0.1 / 0.3 / 1.0).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "vicreg"
  common.solo_learn_cifar(c)
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
  common.cifar_smoke(c)
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64


def cpu(c):
  common.cifar_cpu(c)
  c.projector.hidden = (1024, 1024)
  c.projector.out_dim = 1024


def colab_gpu(c):
  """The E2MC notebook's GPU/TPU base: full-width CIFAR ResNet-18, the recipe's expander,
  batch 512, 3 epochs, the cpu variant's schedule."""
  # Sized for about 20 minutes on a Colab T4, estimated (no GPU measured): XLA's cost
  # analysis of this encoder's forward pass at 32x32 is 0.97 GFLOP per image; a step costs
  # 6 forward passes per image (2 views x (forward + backward = 3), no teacher),
  # 5.8 GFLOP. mecjax computes in float32 (bfloat16 is no tensor-core type on a T4, nor
  # tf32), so the T4's 8.1 TFLOP/s float32 peak bounds it; at an assumed 1.5 TFLOP/s
  # sustained (about 18%, the rate T4 float32 ResNet training usually reaches)
  # that is ~260 images/s, ~195 s an epoch of 50k images.
  # 3 epochs ~10 min; the notebook's two 1-epoch continuations (e2mc_vicreg_cifar10.py:
  # colab_gpu, ~3.5 min each) and the kNN evaluations make up the 20.
  common.cifar_cpu(c, epochs=3)
  c.model.width = 1.0
  c.batch_size = 512
  c.log_every_steps = 50


VARIANTS = {"smoke": smoke, "cpu": cpu, "colab_gpu": colab_gpu}
