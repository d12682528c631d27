r"""MEC on ImageNet with a ViT-S/16 (default) or ViT-B/16, trained as MoCo v3 trains ViTs.

  python -m mecjax.main --config=configs/mec_imagenet_vit.py --workdir=runs/mec_vit_s \
      --config.data.path=/data/imagenet      # a folder (or .tar) of train/<class>/<img>, val/...
  python -m mecjax.main --config=configs/mec_imagenet_vit.py:vit_b --workdir=runs/mec_vit_b ...

Encoder: MoCo v3's ViT (mecjax/models/vit.py): fixed 2-D sin-cos position embedding, class
token, frozen random patch projection (``--stop-grad-conv1``); ViT-S/16 is 384 wide, 12
blocks, 12 heads (MoCo v3's ``vit_small``), ViT-B/16 768 wide, 12 blocks, 12 heads.
Heads: MoCo v3's ViT heads, which MEC's objective uses unchanged here: projector
Linear(4096)-BN-ReLU-Linear(4096)-BN-ReLU-Linear(256)-BN(no affine), predictor
Linear(4096)-BN-ReLU-Linear(256)-BN(no affine) (MoCo v3 keeps the last BN on the ViT
predictor; its ResNet predictor drops it). Linear layers without bias (a BN follows each).
Optimiser (MoCo v3 ``CONFIG.md``, ViT rows): AdamW, lr 1.5e-4 x batch/256, weight decay 0.1
on every parameter, betas (0.9, 0.999) (PyTorch's default: MoCo v3 sets none), 40-epoch
linear warm-up then cosine to 0, 300 epochs, batch 4096; EMA teacher 0.99 -> 1 (cosine,
per step: ``--moco-m-cos``). Augmentation: MoCo v3's at 224 (view 1 blur p=1, view 2 blur
p=0.1 and solarize p=0.2), crops of scale 0.08-1 (``--crop-min`` default; the ResNet recipe
uses 0.2). MEC constants as configs/mec_imagenet.py: eps_sq 64 (lamda_inv = m eps_sq / d =
m / 4 at d = 256), order 4, lamda_inv warmed up from 8x over 10 epochs.

Variants (compose left to right, e.g. ``vit_b,cpu``):
  vit_s: ViT-S/16 (the default, named for composing).
  vit_b: ViT-B/16.
  smoke: the recipe's code path (host crops at 64 px, blur, solarize, AdamW, frozen patch
         projection) with a 2-block, 48-wide ViT/16 and small heads on 256 images of any
         local folder with train/ and test/ splits, 10 steps (CI: the shared CIFAR-10).
  cpu:   the full-size encoder and heads at 224 px on 512 images, batch 16, 16 steps, kNN
         at the end: the real network and input size at CPU scale. Estimated from
         benchmarks/bench_encoders.py (about 1 view/s on the loaded 2-core VM, 5-6 minutes of
         compilation) at 20-25 minutes there; not run end to end.
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "mec"
  c.model.name = "vit_small"
  c.model.width = 1.0
  c.model.stop_grad_patch_embed = True
  c.projector.hidden = (4096, 4096)
  c.projector.out_dim = 256
  c.projector.out_bn = "no_affine"
  c.predictor.hidden = (4096,)
  c.predictor.out_dim = 256
  c.predictor.out_bn = "no_affine"
  c.mec.eps_sq = 64.0
  c.mec.order = 4
  c.mec.lamda_warmup_factor = 8.0
  c.mec.lamda_warmup_epochs = 10

  common.imagenet_data(c)
  c.aug.crop_scale = (0.08, 1.0)

  c.batch_size = 4096
  c.total_epochs = 300
  c.optim.name = "adamw"
  c.optim.base_lr = 1.5e-4
  c.optim.weight_decay = 0.1
  c.optim.exclude_1d = False
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.warmup_epochs = 40
  c.optim.end_lr_factor = 0.0
  c.ema.momentum = 0.99
  c.ema.final_momentum = 1.0

  c.log_every_steps = 100
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = 10
  return configlib.apply_variants(c, arg, VARIANTS)


def vit_s(c):
  c.model.name = "vit_small"


def vit_b(c):
  c.model.name = "vit_base"


def smoke(c):
  common.imagenet_smoke(c)
  c.model.width = 0.125 if c.model.name == "vit_small" else 0.0625   # 48 wide either way
  c.model.depth = 2
  c.model.num_heads = 3
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64
  c.predictor.hidden = (64,)
  c.predictor.out_dim = 64


def cpu(c):
  c.data.max_train_examples = 512
  c.data.max_eval_examples = 256
  c.data.in_memory = False
  c.data.eval_split = "test"
  c.data.host_threads = 4
  c.data.host_workers = 0   # a CPU run on a small machine: crops in the training process
  c.knn.max_train_examples = None
  c.knn.every_epochs = None
  c.knn.k = 20
  c.batch_size = 16
  c.eval_batch_size = 32
  c.total_epochs = None
  c.total_steps = 16
  c.optim.warmup_epochs = None
  c.optim.warmup_steps = 4
  c.mec.lamda_warmup_epochs = None
  c.mec.lamda_warmup_steps = 4
  c.log_every_steps = 2
  c.checkpoint.every_epochs = None
  c.checkpoint.every_steps = 8


VARIANTS = {"vit_s": vit_s, "vit_b": vit_b, "smoke": smoke, "cpu": cpu}
