r"""E2MC continued pre-training of the released SimSiam ResNet-50 on ImageNet (E2MC paper).

  python -m mecjax.main --config=configs/e2mc_simsiam_imagenet.py \
      --workdir=runs/e2mc_simsiam_in --config.init.torch=/path/to/checkpoint_0099.pth.tar \
      [--config.data.path=/path/to/imagenet]
  # the "continued" ablation: the same run without E2MC
  python -m mecjax.main --config=configs/e2mc_simsiam_imagenet.py:continued ...

Start: ``config.init.torch`` = SimSiam's release (``checkpoint_0099.pth.tar``, batch 256:
keys ``module.encoder.*`` with the projector in ``module.encoder.fc.*``, and
``module.predictor.*``), or ``config.init.workdir`` = a mecjax SimSiam run. SimSiam:
ResNet-50, projector [Linear(2048)-BN-ReLU] x2 - Linear(2048) - BN(no affine), predictor
Linear(512)-BN-ReLU-Linear(2048), loss (D(p1, sg z2) + D(p2, sg z1)) / 2, SGD momentum 0.9
base lr 0.05, wd 1e-4; MoCo v2 augmentation (crops 0.2-1, jitter 0.4/0.4/0.4/0.1 p=0.8,
grayscale 0.2, blur p=0.5). E2MC: normal-CDF squash on the projector output (before the
predictor), beta 0.001, gamma 0.01; 10 epochs, batch 512, 0.01 x the base lr, constant.

Variants: ``smoke`` (CI: narrow ResNet-50, 64 px, 6 steps, from a checkpoint the test
writes), ``continued`` (no E2MC).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "simsiam"
  c.model.name = "resnet50"
  c.model.zero_init_residual = True
  c.projector.hidden = (2048, 2048)
  c.projector.out_dim = 2048
  c.projector.out_bn = "no_affine"
  c.predictor.hidden = (512,)
  c.predictor.out_dim = 2048
  common.imagenet_data(c)
  c.aug.crop_scale = (0.2, 1.0)
  c.aug.jitter = (0.4, 0.4, 0.4, 0.1)
  c.aug.blur_prob = (0.5, 0.5)
  c.aug.solarize_prob = (0.0, 0.0)
  c.optim.name = "sgd"
  c.optim.base_lr = 0.05
  c.optim.weight_decay = 1e-4
  c.optim.momentum = 0.9
  common.e2mc_continuation(c, beta=0.001, gamma=0.01, transform="gaussian_cdf", epochs=10,
                               eps=common.FLOAT32_EPS)
  c.log_every_steps = 100
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = 5
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.e2mc_imagenet_smoke(c)
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64
  c.predictor.hidden = (32,)
  c.predictor.out_dim = 64


VARIANTS = {"smoke": smoke, "continued": common.continued}
