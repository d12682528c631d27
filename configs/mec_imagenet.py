r"""MEC on ImageNet with ResNet-50: the official recipe (70.8% linear top-1 at 100 epochs).

  python -m mecjax.main --config=configs/mec_imagenet.py --workdir=runs/mec_imagenet \
      --config.data.path=/data/imagenet      # a folder (or .tar) of train/<class>/<img>, val/...

ResNet-50 (zero-init residual gamma); projector
Linear(2048)-BN-ReLU-Linear(2048)-BN-ReLU-Linear(2048)-BN(no affine); predictor
Linear(512)-BN-ReLU-Linear(2048); EMA teacher 0.996 -> 1 (cosine, per step); SGD momentum 0.9,
wd 1e-5 on all parameters, lr 0.5 x batch/256 (2.0 at batch 1024), 10-epoch warm-up then
cosine, 100 epochs; eps_sq 64 (lamda_inv = m eps_sq / d = m / 32), order 4, lamda_inv warmed
up from 8x over 10 epochs. MoCo v3 augmentation at 224: view 1 blur p=1, view 2 blur p=0.1
and solarize p=0.2. Without data.path, tfds ``imagenet2012`` (manual download) is read.

Variants:
  smoke: the same recipe (host crops, blur, solarize) with a narrow ResNet-50 at 64 px on 256
         images of any local folder with train/ and test/ splits (CI: the shared CIFAR-10).
  multicrop: 2x224 + 6x96 views (the MEC appendix's multi-crop setting), composable after
         ``smoke`` (``:smoke,multicrop``: 2x64 + 6x27).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "mec"
  c.model.name = "resnet50"
  c.model.width = 1.0
  c.model.zero_init_residual = True
  c.projector.hidden = (2048, 2048)
  c.projector.out_dim = 2048
  c.projector.out_bn = "no_affine"
  c.predictor.hidden = (512,)
  c.predictor.out_dim = 2048
  c.mec.eps_sq = 64.0
  c.mec.order = 4
  c.mec.lamda_warmup_factor = 8.0
  c.mec.lamda_warmup_epochs = 10

  common.imagenet_data(c)
  c.aug.crop_scale = (0.2, 1.0)

  c.batch_size = 1024
  c.total_epochs = 100
  c.optim.name = "sgd"
  c.optim.base_lr = 0.5
  c.optim.weight_decay = 1e-5
  c.optim.momentum = 0.9
  c.optim.warmup_epochs = 10
  c.optim.schedule = "official"   # np.linspace warm-up of the official cosine_scheduler
  c.ema.momentum = 0.996

  c.log_every_steps = 100
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = 10
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.imagenet_smoke(c)
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64
  c.predictor.hidden = (32,)
  c.predictor.out_dim = 64


def multicrop(c):
  # SwAV's multi-crop, which the MEC appendix uses: six local views at 96 px (3/7 of the
  # global side, so 27 px in the 64-px smoke run), crop scales split at 0.14 (globals
  # (0.14, 1) instead of MoCo v3's (0.2, 1), locals (0.05, 0.14)), host-cropped like the
  # globals. Locals get the globals' jitter and grayscale, blur p=0.5 and no solarize (SwAV
  # and DINO). Each local predicts both global teacher views (mecjax/methods/mec.py).
  c.aug.num_local = 6
  c.aug.local_size = c.data.image_size * 3 // 7
  c.aug.crop_scale = (0.14, 1.0)
  c.aug.local_crop_scale = (0.05, 0.14)
  c.aug.local_blur_prob = 0.5
  c.aug.local_solarize_prob = 0.0


VARIANTS = {"smoke": smoke, "multicrop": multicrop}
