r"""Semi-supervised fine-tuning on ImageNet's 1% / 10% labelled subsets (MEC appendix).

  python -m mecjax.main --config=configs/semisup_imagenet.py:1pct --workdir=runs/semisup_in \
      --config.init.workdir=runs/mec_imagenet       # or --config.init.torch=r50.pth

SimCLR's subsets through tfds ``imagenet2012_subset/1pct`` and ``/10pct`` (12,811 and
128,116 images; prepared from the manual ImageNet download), evaluated on the 50,000
``validation`` images. ResNet-50 and a new linear head trained whole: SGD momentum 0.9,
lr 0.05 at batch 1024, weight decay 0, 50 epochs, cosine (``common.semisup_finetune``);
train images: random-resized crop at 224 (0.08-1) + flip on the host; validation: resize
256, centre crop 224. Logs ``finetune_top1`` / ``finetune_top5``. Default: ``10pct``.

Variants:
  10pct: tfds imagenet2012_subset/10pct.
  1pct:  tfds imagenet2012_subset/1pct.
  smoke: the same code path at 64 px on 256 images of any local folder with train/ and
         test/ splits (``data.path``), batch 32, 8 steps (CI: the shared CIFAR-10).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.model.name = "resnet50"
  c.model.width = 1.0
  common.imagenet_data(c)
  common.semisup_finetune(c)
  c.data.name = "imagenet2012_subset/10pct"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.log_every_steps = 50
  c.checkpoint.every_epochs = 1
  return configlib.apply_variants(c, arg, VARIANTS)


def pct10(c):
  c.data.name = "imagenet2012_subset/10pct"


def pct1(c):
  c.data.name = "imagenet2012_subset/1pct"


def smoke(c):
  common.imagenet_smoke(c)
  common.evaluation_smoke(c)
  c.data.in_memory = False
  c.knn.enabled = False


VARIANTS = {"10pct": pct10, "1pct": pct1, "smoke": smoke}
