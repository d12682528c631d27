r"""Offline linear probe on CIFAR-10 of the encoder of any mecjax run (MEC's probe protocol).

  python -m mecjax.main --config=configs/linear_cifar10.py --workdir=runs/linear_X \
      --config.init.workdir=runs/X --config.data.path=../shared/data/cifar10-jpeg.tar.gz

The encoder (architecture and input normalisation too) is the online encoder of the run in
``init.workdir`` (its latest checkpoint, or ``init.step``), frozen, BN in eval mode;
``BN(no affine, eps 1e-6) -> Linear`` on its pooled features, SGD momentum 0.9,
lr 0.03 x 4096/256, weight decay 0, batch 4096, 100 epochs, cosine: the MEC recipe
(``common.mec_linear_probe``). CIFAR recipe for the images: 32x32, test images as they
are (no crop). By default the train and test features are computed once, un-augmented, and
cached in ``DIR/features`` (minutes on a 2-core CPU); ``augment`` trains on a fresh
random-resized crop + flip of every image at every step instead, through the frozen encoder.
Logs ``linear_top1`` and ``linear_top5`` at the end.

Variants:
  smoke:   256 train / 128 test images, batch 32, 8 steps (CI).
  augment: random-resized crop (0.08-1) + flip each step, no feature cache.
  lars:    LARS (trust 0.001, biases and BN excluded) at the same learning rate.
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  common.mec_linear_probe(c)
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.eval_split = "test"
  c.aug.name = "cifar"
  c.linear.cache_features = True
  c.linear.metric = "top1"
  c.checkpoint.every_epochs = 25
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.evaluation_smoke(c)


def augment(c):
  c.linear.cache_features = False


VARIANTS = {"smoke": smoke, "augment": augment, "lars": common.lars_probe}
