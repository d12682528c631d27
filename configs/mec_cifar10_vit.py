r"""MEC on CIFAR-10 with a small ViT on 4x4 patches (32x32 images: an 8x8 grid).

  python -m mecjax.main --config=configs/mec_cifar10_vit.py --workdir=runs/mec_cifar10_vit
  python -m mecjax.main --config=configs/mec_cifar10_vit.py:cpu --workdir=runs/mec_vit_cpu \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

There is no published MEC (or MoCo v3) CIFAR-10 ViT recipe; this one joins the two parts
that exist. Encoder ``vit_tiny_cifar``: DeiT-Ti's sizes (192 wide, 12 blocks, 3 heads, MLP
4x) on 4x4 patches, MoCo v3's ViT otherwise (fixed 2-D sin-cos position embedding, class
token, frozen random patch projection). Heads, optimiser and teacher: MoCo v3's ViT recipe
(configs/mec_imagenet_vit.py): projector 4096-4096-256 and predictor 4096-256, each ending in
BN without affine; AdamW lr 1.5e-4 x batch/256, wd 0.1, betas (0.9, 0.999), 40-epoch
warm-up; EMA 0.99 -> 1. Data, schedule length and loss: MEC's CIFAR recipe
(configs/mec_cifar10.py): batch 512, 600 epochs, crops of scale 0.2-1, no blur, solarize
on view 2, order 4, eps_d^2 = eps_sq / d = 0.12.

Variants:
  smoke: a 2-block, 48-wide ViT on 16x16 images (a 4x4 grid), small heads, 256 images,
         12 steps (CI; about half a minute on a 2-core CPU).
  cpu:   a 4-block, 96-wide ViT at 32x32, 1024-256 heads, batch 256, 2 epochs: sized for
         about 20 minutes of a 2-core CPU from the CPU time of its train step (7.4 s of CPU
         per 256-image step measured with 6 blocks, so about 5 s with 4: 390 steps in 16-20
         minutes on two free cores). Sized, not tuned: its kNN is not measured yet.
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "mec"
  c.model.name = "vit_tiny_cifar"
  c.model.width = 1.0
  c.model.stop_grad_patch_embed = True
  c.projector.hidden = (4096, 4096)
  c.projector.out_dim = 256
  c.projector.out_bn = "no_affine"
  c.predictor.hidden = (4096,)
  c.predictor.out_dim = 256
  c.predictor.out_bn = "no_affine"
  c.mec.eps_sq = 0.12 * 256
  c.mec.order = 4
  c.mec.lamda_warmup_epochs = 10

  c.data.name = "cifar10"
  c.data.image_size = 32
  c.aug.name = "cifar"
  c.aug.crop_scale = (0.2, 1.0)
  c.aug.blur_prob = (0.0, 0.0)
  c.aug.solarize_prob = (0.0, 0.2)

  c.batch_size = 512
  c.total_epochs = 600
  c.optim.name = "adamw"
  c.optim.base_lr = 1.5e-4
  c.optim.weight_decay = 0.1
  c.optim.exclude_1d = False
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.warmup_epochs = 40
  c.ema.momentum = 0.99
  c.ema.final_momentum = 1.0

  c.log_every_steps = 50
  c.checkpoint.every_epochs = 10
  c.knn.every_epochs = 10
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.cifar_smoke(c)
  c.data.image_size = 16       # a 4x4 grid of 4x4 patches: compiles in seconds
  c.model.width = 0.25         # 48 wide, 3 heads of 16
  c.model.depth = 2
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64
  c.predictor.hidden = (64,)
  c.predictor.out_dim = 64
  c.mec.eps_sq = 0.12 * 64


def cpu(c):
  common.cifar_cpu(c, epochs=2)
  c.model.width = 0.5          # 96 wide, 3 heads of 32
  c.model.depth = 4
  c.projector.hidden = (1024, 1024)
  c.projector.out_dim = 256
  c.predictor.hidden = (1024,)
  c.predictor.out_dim = 256
  c.optim.warmup_epochs = 0.5


VARIANTS = {"smoke": smoke, "cpu": cpu}
