r"""E2MC continued pre-training of the released VICReg ResNet-50 on ImageNet (E2MC paper).

  python -m mecjax.main --config=configs/e2mc_vicreg_imagenet.py --workdir=runs/e2mc_vicreg_in \
      --config.init.torch=/path/to/resnet50_fullckpt.pth [--config.data.path=/path/to/imagenet]
  # the "continued" ablation: the same run without E2MC
  python -m mecjax.main --config=configs/e2mc_vicreg_imagenet.py:continued ...

Start: ``config.init.torch`` = VICReg's release (``resnet50_fullckpt.pth``: backbone and
expander, keys ``module.backbone.*`` / ``module.projector.*``; ``resnet50.pth`` has the
backbone only, then the expander starts fresh), or ``config.init.workdir`` = a mecjax VICReg
run. VICReg: ResNet-50, expander 8192-8192-8192 (the release's hidden biases fold into the
BN statistics on import), loss 25 x invariance + 25 x variance + 1 x covariance, LARS
(eta 0.001, biases and norm parameters excluded) base lr 0.2, wd 1e-6, VICReg augmentations
(crops 0.08-1, jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale 0.2, blur p=1.0/0.1, solarize
p=0/0.2). E2MC: sigmoid squash on the raw expander output, beta 1000, gamma 100; 10 epochs,
batch 512, 0.01 x the base lr, constant.

Variants: ``smoke`` (CI: narrow ResNet-50, 64 px, 6 steps, from a checkpoint the test
writes), ``continued`` (no E2MC).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "vicreg"
  c.model.name = "resnet50"
  c.model.zero_init_residual = True
  c.projector.hidden = (8192, 8192)
  c.projector.out_dim = 8192
  c.projector.out_bn = None
  c.projector.out_bias = False
  c.predictor.out_dim = 0
  c.vicreg.sim_weight = 25.0
  c.vicreg.var_weight = 25.0
  c.vicreg.cov_weight = 1.0
  common.imagenet_data(c)
  c.aug.crop_scale = (0.08, 1.0)
  c.aug.jitter = (0.4, 0.4, 0.2, 0.1)
  c.aug.blur_prob = (1.0, 0.1)
  c.aug.solarize_prob = (0.0, 0.2)
  c.optim.name = "lars"
  c.optim.base_lr = 0.2
  c.optim.weight_decay = 1e-6
  c.optim.trust_coefficient = 0.001
  c.optim.exclude_1d = True
  common.e2mc_continuation(c, beta=1000.0, gamma=100.0, transform="sigmoid", epochs=10)
  c.log_every_steps = 100
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = 5
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.e2mc_imagenet_smoke(c)
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64


VARIANTS = {"smoke": smoke, "continued": common.continued}
