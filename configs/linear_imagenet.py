r"""Offline linear probe on ImageNet: the official MEC recipe (``main_lincls``).

  python -m mecjax.main --config=configs/linear_imagenet.py --workdir=runs/linear_in \
      --config.init.workdir=runs/mec_imagenet --config.data.path=/data/imagenet
  # a released torchvision-layout ResNet-50 instead of a run directory:
  python -m mecjax.main --config=configs/linear_imagenet.py --workdir=runs/linear_in \
      --config.init.torch=r50.pth --config.data.path=/data/imagenet

Frozen ResNet-50 (BN in eval mode), ``BN(2048, no affine, eps 1e-6) -> Linear(1000)``,
SGD momentum 0.9, lr 0.03 x 4096/256 = 0.48, weight decay 0, batch 4096, 100 epochs, cosine
per step; train images: random-resized crop at 224 (scale 0.08-1) + horizontal flip, taken
on the host from the full image; validation images: resize 256, centre crop 224
(``aug.name = "mocov3"``'s eval transform); ImageNet mean/std. Without data.path, tfds
``imagenet2012`` (manual download). Logs ``linear_top1`` / ``linear_top5``.

Variants:
  smoke:  the same code path at 64 px (host crops from files) on 256 images of any local
          folder with train/ and test/ splits, batch 32, 8 steps (CI: the shared CIFAR-10).
  lars:   LARS (trust 0.001, biases and BN excluded) at the same learning rate.
  cached: un-augmented features computed once and cached in DIR/features (fast, no crops).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.model.name = "resnet50"
  c.model.width = 1.0
  common.imagenet_data(c)
  common.mec_linear_probe(c)
  c.linear.cache_features = False
  c.log_every_steps = 100
  c.checkpoint.every_epochs = 1
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.imagenet_smoke(c)
  common.evaluation_smoke(c)
  c.data.in_memory = False
  c.knn.enabled = False


def cached(c):
  c.linear.cache_features = True


VARIANTS = {"smoke": smoke, "lars": common.lars_probe, "cached": cached}
