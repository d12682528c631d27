r"""E2MC continued pre-training of a SwAV CIFAR-10 checkpoint (ours: the ``cpu`` variant).

  # the base (once):
  python -m mecjax.main --config=configs/swav_cifar10.py:cpu \
      --workdir=runs/swav_cifar10_cpu --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  # + E2MC, and the "continued" ablation (same run without E2MC):
  python -m mecjax.main --config=configs/e2mc_swav_cifar10.py --workdir=runs/e2mc_swav \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  python -m mecjax.main --config=configs/e2mc_swav_cifar10.py:continued \
      --workdir=runs/continued_swav --config.data.path=../shared/data/cifar10-jpeg.tar.gz

SwAV loss plus E2MC on the un-normalised 128-d head output of the two crops, normal-CDF
squash, beta 1, gamma 25 (the paper's SwAV setting); 10 epochs at 0.01 x SwAV's learning rate
(constant), batch 512, prototypes not frozen and the queue in use from the start (the base
run is past both); encoder, head and prototypes from ``config.init.workdir`` (default
runs/swav_cifar10_cpu).

Variants: ``smoke`` (CI: from runs/swav_cifar10_smoke), ``short`` (1 epoch), ``continued``
(no E2MC); they compose: ``:short,continued``. E2MC's ablation criteria in E2MC's place
(paper Table 3; mecjax/losses/ablation.py): ``vc`` (variance-covariance, mu 0.1, nu 0.001, on
the two crops), ``au`` (uniformity over each crop's pairs, t 2, lambda 0.5), ``mmcr`` (nuclear
norm of the view centroids over all views, lambda 0.005): ``:vc``, ``:smoke,mmcr``, ...
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  # The base: SwAV's CIFAR-10 recipe at the size of the run it continues (cpu, or smoke).
  base_variant = common.e2mc_base_variant(arg)
  swav = configlib.import_beside(__file__, "swav_cifar10")
  c = swav.get_config(base_variant)
  # + E2MC: the paper's SwAV setting (float32 epsilon in the m-spacings log, as the official
  # script), 10 epochs at 0.01 x SwAV's lr, constant, batch 512; prototypes not frozen and
  # the queue in use from the start.
  common.e2mc_continuation(c, beta=1.0, gamma=25.0, transform="gaussian_cdf", epochs=10,
                           eps=common.FLOAT32_EPS)
  c.init.workdir = f"runs/swav_cifar10_{base_variant}"
  # The official continuation keeps SwAV's queue from the first step. Where the short base
  # run had none (cpu), it takes the recipe's (3840 rows, 7.5 batches of 512): at 0.01 x lr the
  # network moves little over 7 steps, so the queued embeddings agree with the current ones.
  if not c.swav.queue_size:
    c.swav.queue_size = swav.QUEUE_SIZE
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = None
  return configlib.apply_variants(c, arg, VARIANTS)


VARIANTS = {**common.E2MC_CIFAR_VARIANTS, **common.E2MC_ABLATION_VARIANTS}
