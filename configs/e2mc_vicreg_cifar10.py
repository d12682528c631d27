r"""E2MC continued pre-training of a VICReg CIFAR-10 checkpoint (ours: the ``cpu`` variant).

  # the base (once):
  python -m mecjax.main --config=configs/vicreg_cifar10.py:cpu \
      --workdir=runs/vicreg_cifar10_cpu --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  # + E2MC, and the "continued" ablation (same run without E2MC):
  python -m mecjax.main --config=configs/e2mc_vicreg_cifar10.py --workdir=runs/e2mc_vicreg \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  python -m mecjax.main --config=configs/e2mc_vicreg_cifar10.py:continued \
      --workdir=runs/continued_vicreg --config.data.path=../shared/data/cifar10-jpeg.tar.gz

VICReg loss plus E2MC on the raw expander output, sigmoid squash, beta 1000, gamma 100 (the
paper's VICReg setting); 10 epochs at 0.01 x VICReg's learning rate (constant), batch 512,
encoder and expander from ``config.init.workdir`` (default runs/vicreg_cifar10_cpu).

Variants: ``smoke`` (CI: from runs/vicreg_cifar10_smoke), ``short`` (1 epoch),
``continued`` (no E2MC); they compose: ``:short,continued``. E2MC's ablation criteria in
E2MC's place, on the same raw expander output (paper Table 3 runs them on SwAV; here they
continue the same VICReg weights beside E2MC): ``vc`` (variance-covariance, mu 0.1, nu 0.001,
in the L2-normalised space, on top of VICReg's own raw-space terms), ``au`` (uniformity, t 2,
lambda 0.5), ``mmcr`` (nuclear norm of the view centroids, lambda 0.005).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  # The base: VICReg's CIFAR-10 recipe at the size of the run it continues (cpu, or the
  # smoke / colab_gpu variant asked for).
  base_variant = common.e2mc_base_variant(arg)
  c = configlib.import_beside(__file__, "vicreg_cifar10").get_config(base_variant)
  # + E2MC: the paper's VICReg setting, 10 epochs at 0.01 x VICReg's lr, constant, batch 512.
  common.e2mc_continuation(c, beta=1000.0, gamma=100.0, transform="sigmoid", epochs=10)
  c.init.workdir = f"runs/vicreg_cifar10_{base_variant}"
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = None
  return configlib.apply_variants(c, arg, VARIANTS)


def colab_gpu(c):
  """The E2MC notebook's GPU/TPU continuation: one epoch at batch 512 from the full-width
  base (vicreg_cifar10.py:colab_gpu, read from init.workdir, default
  runs/vicreg_cifar10_colab_gpu). Estimated as that base's variant explains: 5.8 GFLOP per
  image and step (the E2MC terms on the 2048-wide embedding add well under 1%), ~195 s of a
  T4 for the epoch, ~3.5 min with the final kNN."""
  c.total_epochs = 1


VARIANTS = {**common.E2MC_CIFAR_VARIANTS, **common.E2MC_ABLATION_VARIANTS,
            "colab_gpu": colab_gpu}
