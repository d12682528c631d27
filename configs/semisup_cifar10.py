r"""Semi-supervised fine-tuning on CIFAR-10 (the MEC appendix's protocol, CIFAR subsets).

  python -m mecjax.main --config=configs/semisup_cifar10.py:10pct --workdir=runs/semisup_X \
      --config.init.workdir=runs/X --config.data.path=../shared/data/cifar10-jpeg.tar.gz

The encoder of the run in ``init.workdir`` (architecture from its config.json) and a new
linear head trained whole on a labelled subset of the train split with cross-entropy: SGD
momentum 0.9, lr 0.05 at batch 1024, weight decay 0, 50 epochs, cosine, one random-resized
crop (0.08-1) + flip per image and step (``common.semisup_finetune``). The subsets are
deterministic and class-balanced (``data.max_train_examples``: the first images of each
class in file order, ``sources.balanced_subset``). Evaluated on the test split (as is, no
crop), BN in eval mode; logs ``finetune_top1`` / ``finetune_top5``. Default: ``10pct``.

Variants (the subset variants set the subset size, ``smoke`` caps it; any order):
  10pct: 5,000 labelled images (500 per class), batch 1024 (4 steps per epoch).
  1pct:  500 labelled images (50 per class); batch 128 at the same lr per example
         (0.05 x 128/1024), as 500 images do not fill one batch of 1024.
  cpu:   10 epochs instead of 50: a few minutes for a width-0.25 encoder on a 2-core CPU.
  smoke: 256 of the subset's images, 128 test images, batch 32, 8 steps (CI).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments

CIFAR10_TRAIN = 50_000


def get_config(arg: str | None = None):
  c = configlib.base()
  common.semisup_finetune(c)
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.eval_split = "test"
  c.aug.name = "cifar"
  c.data.max_train_examples = CIFAR10_TRAIN // 10
  return configlib.apply_variants(c, arg, VARIANTS)


def _subset(c, fraction: float):
  n = int(CIFAR10_TRAIN * fraction)
  cap = c.data.max_train_examples
  c.data.max_train_examples = n if cap is None or cap >= CIFAR10_TRAIN // 10 else min(cap, n)


def pct10(c):
  _subset(c, 0.10)


def pct1(c):
  _subset(c, 0.01)
  if c.batch_size == 1024:
    c.batch_size = 128


def cpu(c):
  c.total_epochs = 10
  c.checkpoint.every_epochs = 5


def smoke(c):
  common.evaluation_smoke(c)


VARIANTS = {"10pct": pct10, "1pct": pct1, "cpu": cpu, "smoke": smoke}
