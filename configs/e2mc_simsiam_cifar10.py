r"""E2MC continued pre-training of a SimSiam CIFAR-10 checkpoint (ours: the ``cpu`` variant).

  # the base (once):
  python -m mecjax.main --config=configs/simsiam_cifar10.py:cpu \
      --workdir=runs/simsiam_cifar10_cpu --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  # + E2MC, and the "continued" ablation (same run without E2MC):
  python -m mecjax.main --config=configs/e2mc_simsiam_cifar10.py --workdir=runs/e2mc_simsiam \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  python -m mecjax.main --config=configs/e2mc_simsiam_cifar10.py:continued \
      --workdir=runs/continued_simsiam --config.data.path=../shared/data/cifar10-jpeg.tar.gz

SimSiam loss plus E2MC on the projector output (before the predictor), normal-CDF squash,
beta 0.001, gamma 0.01 (the paper's SimSiam setting); 10 epochs at 0.01 x SimSiam's learning
rate (constant), batch 512; encoder, projector and predictor from ``config.init.workdir``
(default runs/simsiam_cifar10_cpu).

Variants: ``smoke`` (CI: from runs/simsiam_cifar10_smoke), ``short`` (1 epoch),
``continued`` (no E2MC); they compose: ``:short,continued``.
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  # The base: SimSiam's CIFAR-10 recipe at the size of the run it continues (cpu, or smoke).
  base_variant = common.e2mc_base_variant(arg)
  c = configlib.import_beside(__file__, "simsiam_cifar10").get_config(base_variant)
  # + E2MC: the paper's SimSiam setting (float32 epsilon in the m-spacings log), 10 epochs at
  # 0.01 x SimSiam's lr, constant, batch 512.
  common.e2mc_continuation(c, beta=0.001, gamma=0.01, transform="gaussian_cdf", epochs=10,
                           eps=common.FLOAT32_EPS)
  c.init.workdir = f"runs/simsiam_cifar10_{base_variant}"
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = None
  return configlib.apply_variants(c, arg, VARIANTS)


VARIANTS = common.E2MC_CIFAR_VARIANTS
