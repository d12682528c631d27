r"""MUSIC on CIFAR-10 with a CIFAR ResNet-18 (the MUSIC authors' CIFAR recipe).

  python -m mecjax.main --config=configs/music_cifar10.py --workdir=runs/music_cifar10 \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

Default: CIFAR ResNet-18, projector Linear(1024)-BN-ReLU-Linear(1024)-BN-ReLU-Linear(1024)
(no output BN), 1024-d embedding in S=32 segments of D_S=32, softmax temperature 1,
invariance weight 1; symmetric twin network (no predictor, no EMA); SGD momentum 0.9, wd 5e-4,
lr 0.1 x batch/256, batch 512, 800 epochs, 10-epoch warm-up then cosine (the warm-up length is
not stated by the paper; 10 epochs as the other recipes). Augmentation as the MEC CIFAR recipe
(crops 0.2-1, colour jitter, grayscale, solarize p=0.2 on view 2, no blur). Paper: 89.2%
linear top-1 at D_S 32-48.

Variants:
  smoke: a tiny network (64-d embedding, 4 segments of 16) for 12 steps (CI).
  cpu:   width-0.25 encoder at batch 256 on the shared CIFAR-10, 6 epochs, lr 0.3 (the
         short-run sweep's choice; benchmarks/RESULTS.md).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "music"
  c.model.name = "resnet18_cifar"
  c.projector.hidden = (1024, 1024)
  c.projector.out_dim = 1024
  c.projector.out_bn = None
  c.predictor.out_dim = 0
  c.music.segment_size = 32
  c.music.temperature = 1.0
  c.music.invariance_weight = 1.0

  c.data.name = "cifar10"
  c.data.image_size = 32
  c.aug.name = "cifar"
  c.aug.blur_prob = (0.0, 0.0)
  c.aug.solarize_prob = (0.0, 0.2)

  c.batch_size = 512
  c.total_epochs = 800
  c.optim.name = "sgd"
  c.optim.base_lr = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.momentum = 0.9
  c.optim.warmup_epochs = 10

  c.log_every_steps = 50
  c.checkpoint.every_epochs = 10
  c.knn.every_epochs = 10
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.cifar_smoke(c)
  c.projector.hidden = (64, 64)
  c.projector.out_dim = 64
  c.music.segment_size = 16


def cpu(c):
  common.cifar_cpu(c)
  # The short-run sweep (one epoch at 0.1 / 0.3 / 1.0, benchmarks/RESULTS.md): 0.3 learns
  # fastest; the recipe's 0.1 is for 800 epochs.
  c.optim.base_lr = 0.3


def colab_gpu(c):
  """The notebook's GPU/TPU run: full-width CIFAR ResNet-18, the recipe's heads, batch 512,
  5 epochs, the cpu variant's schedule."""
  # Sized for about 20 minutes on a Colab T4, estimated (no GPU measured): XLA's cost
  # analysis of this encoder's forward pass at 32x32 is 0.97 GFLOP per image; a step costs
  # 6 forward passes per image (2 views x (forward + backward = 3), no teacher),
  # 5.8 GFLOP. mecjax computes in float32 (bfloat16 is no tensor-core type on a T4, nor
  # tf32), so the T4's 8.1 TFLOP/s float32 peak bounds it; at an assumed 1.5 TFLOP/s
  # sustained (about 18%, the rate T4 float32 ResNet training usually reaches)
  # that is ~260 images/s, ~195 s an epoch of 50k images.
  # 5 epochs ~16 min, the final kNN and compilation the rest.
  common.cifar_cpu(c, epochs=5)
  c.model.width = 1.0
  c.batch_size = 512
  c.log_every_steps = 50


VARIANTS = {"smoke": smoke, "cpu": cpu, "colab_gpu": colab_gpu}
