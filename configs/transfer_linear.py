r"""Transfer linear probes on the data sets of the MEC appendix (Kornblith et al. 2019's
"linear evaluation" suite), one data set per argument:

  python -m mecjax.main --config=configs/transfer_linear.py:pets --workdir=runs/pets_X \
      --config.init.workdir=runs/X          # or --config.init.torch=r50.pth
  # a data set tfds does not carry (FGVC-Aircraft), or any local copy: a folder
  # <split>/<class>/<image> with the splits named below
  python -m mecjax.main --config=configs/transfer_linear.py:aircraft --workdir=runs/air_X \
      --config.init.workdir=runs/X --config.data.path=/data/fgvc-aircraft

| argument | tfds name | train split | eval split | classes | metric |
|---|---|---|---|---|---|
| food101 | food101 | train | validation | 101 | top1 |
| cifar10 | cifar10 | train | test | 10 | top1 |
| cifar100 | cifar100 | train | test | 100 | top1 |
| sun397 | sun397/standard-part1-120k | train+validation | test | 397 | top1 |
| cars | cars196 | train | test | 196 | top1 |
| aircraft | not in tfds: data.path | trainval | test | 100 | mean_per_class |
| voc2007 | voc/2007 (labels: sets) | train+validation | test | 20 | map11 |
| dtd | dtd (split 1) | train+validation | test | 47 | top1 |
| pets | oxford_iiit_pet | train | test | 37 | mean_per_class |
| caltech101 | caltech101 | train | test | 102 | mean_per_class |
| flowers | oxford_flowers102 | train+validation | test | 102 | mean_per_class |

Metrics as the literature reports them: mean-per-class accuracy for Aircraft, Pets,
Caltech-101 and Flowers, the VOC2007 devkit's 11-point mAP for the multi-label VOC2007
(image-level labels, sigmoid cross-entropy), top-1 otherwise; top-1 and top-5 are logged
for every single-label set. Where a validation split exists the probe trains on
train+validation (the literature picks hyper-parameters on validation, then trains on
both); there is no hyper-parameter search here. Caltech-101 is tfds's split (30 train images
per class, the rest test); SUN397 the first of the ten standard partitions.

Protocol: the frozen encoder's un-augmented features (cached in DIR/features), then
``BN(no affine, eps 1e-6) -> Linear``, SGD momentum 0.9, lr 0.03 x batch/256, weight decay
0, batch 256 (the smaller sets hold a few thousand images), 100 epochs, cosine. Images at
224: resize 256 and centre crop 224 (CIFAR: resized to 224 whole), the normalisation of the
encoder's run. Logs ``linear_top1`` / ``linear_top5`` / ``linear_<metric>``.

Variants: each data set's name above (default: cifar10); ``smoke`` (composable in any
order: ``:pets,smoke``) reads 32x32 images kept in memory, at most 256 train / 128 eval
images, batch 32, 8 steps (CI runs it on a synthetic folder with ``data.path``).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments

# argument: (tfds name, train split, eval split, metric)
DATASETS = {
    "food101": ("food101", "train", "validation", "top1"),
    "cifar10": ("cifar10", "train", "test", "top1"),
    "cifar100": ("cifar100", "train", "test", "top1"),
    "sun397": ("sun397/standard-part1-120k", "train+validation", "test", "top1"),
    "cars": ("cars196", "train", "test", "top1"),
    # Not in the tfds catalog: the name only makes the tfds error say so; pass data.path.
    "aircraft": ("fgvc_aircraft", "trainval", "test", "mean_per_class"),
    "voc2007": ("voc/2007", "train+validation", "test", "map11"),
    "dtd": ("dtd", "train+validation", "test", "top1"),
    "pets": ("oxford_iiit_pet", "train", "test", "mean_per_class"),
    "caltech101": ("caltech101", "train", "test", "mean_per_class"),
    "flowers": ("oxford_flowers102", "train+validation", "test", "mean_per_class"),
}
# Small images: resized to the input size whole, not centre-cropped from 256.
WHOLE_IMAGE = ("cifar10", "cifar100")


def get_config(arg: str | None = None):
  c = configlib.base()
  c.model.name = "resnet50"
  common.imagenet_data(c)
  common.mec_linear_probe(c)
  c.batch_size = 256
  c.eval_batch_size = 256
  c.linear.cache_features = True
  c.checkpoint.every_epochs = 25
  c.log_every_steps = 50
  c.knn.max_train_examples = None
  dataset(c, "cifar10")   # the default data set; each argument above replaces it
  return configlib.apply_variants(c, arg, VARIANTS)


def dataset(c, name: str) -> None:
  tfds_name, train_split, eval_split, metric = DATASETS[name]
  c.data.name = tfds_name
  c.data.train_split = train_split
  c.data.eval_split = eval_split
  c.linear.metric = metric
  c.linear.multi_label = metric == "map11"
  _input(c)


def _input(c) -> None:
  """Small inputs (smoke) and CIFAR images: the whole image resized (the "cifar" recipe's
  eval transform), CIFAR at 224 decoded per access; others: resize 256, centre crop 224."""
  whole = c.data.name in WHOLE_IMAGE
  c.aug.name = "cifar" if whole or c.data.image_size <= 64 else "mocov3"
  c.data.in_memory = False if whole and c.data.image_size > 64 else None


def smoke(c):
  common.evaluation_smoke(c)
  c.data.image_size = 32
  _input(c)


VARIANTS = {"smoke": smoke, **{name: (lambda c, n=name: dataset(c, n)) for name in DATASETS}}
