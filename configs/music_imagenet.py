r"""MUSIC on ImageNet with ResNet-50 (the official recipe; paper: 73.6% linear
top-1 after 1000 epochs).

  python -m mecjax.main --config=configs/music_imagenet.py --workdir=runs/music_imagenet \
      --config.data.path=/data/imagenet      # a folder (or .tar) of train/<class>/<img>, val/...

ResNet-50; projector Linear(8192)-BN-ReLU-Linear(8160, no bias): 8160 = S x D_S = 102 x 80;
softmax temperature 1, invariance weight 1; symmetric twin network. LARS (eta 0.001, wd 1e-6,
biases and norm parameters excluded from adaptation and decay), lr 0.6 x batch/256 (4.8 at
batch 2048), 10-epoch warm-up then cosine to 0.001 x; 1000 epochs. VICReg's augmentations
(crops 0.08-1, colour jitter, grayscale; view 1 blur p=1, view 2 blur p=0.1 and solarize
p=0.2). Without data.path, tfds ``imagenet2012`` (manual download) is read.

Variants:
  smoke: the same recipe with a narrow ResNet-50 at 64 px on 256 images of any local folder
         with train/ and test/ splits (CI: the shared CIFAR-10).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "music"
  c.model.name = "resnet50"
  c.model.zero_init_residual = True
  c.projector.hidden = (8192,)
  c.projector.out_dim = 8160
  c.projector.out_bn = None
  c.projector.out_bias = False
  c.predictor.out_dim = 0
  c.music.segment_size = 80
  c.music.temperature = 1.0
  c.music.invariance_weight = 1.0

  common.imagenet_data(c)
  c.aug.crop_scale = (0.08, 1.0)

  c.batch_size = 2048
  c.total_epochs = 1000
  c.optim.name = "lars"
  c.optim.base_lr = 0.6
  c.optim.weight_decay = 1e-6
  c.optim.trust_coefficient = 0.001
  c.optim.exclude_1d = True
  c.optim.momentum = 0.9
  c.optim.warmup_epochs = 10
  c.optim.end_lr_factor = 0.001

  c.log_every_steps = 100
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = 10
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.imagenet_smoke(c)
  c.projector.hidden = (64,)
  c.projector.out_dim = 64
  c.music.segment_size = 16


VARIANTS = {"smoke": smoke}
