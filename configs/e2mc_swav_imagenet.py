r"""E2MC continued pre-training of the released SwAV ResNet-50 on ImageNet (E2MC paper).

  python -m mecjax.main --config=configs/e2mc_swav_imagenet.py --workdir=runs/e2mc_swav_in \
      --config.init.torch=/path/to/swav_800ep_pretrain.pth.tar \
      [--config.data.path=/path/to/imagenet]
  # the "continued" ablation: the same run without E2MC
  python -m mecjax.main --config=configs/e2mc_swav_imagenet.py:continued ...

Start: ``config.init.torch`` = SwAV's release (``swav_800ep_pretrain.pth.tar``: keys
``module.*``, ``module.projection_head.*``, ``module.prototypes.weight``), or
``config.init.workdir`` = a mecjax SwAV run. SwAV (800-epoch recipe): ResNet-50, head
Linear(2048)-BN-ReLU-Linear(128), 3000 unit-norm prototypes, Sinkhorn-Knopp (epsilon 0.05, 3
iterations) with a 3840-row queue, temperature 0.1, LARS (eta 0.001) base lr 0.3 (4.8 at
batch 4096), wd 1e-6; crops 0.14-1, jitter 0.8/0.8/0.8/0.2 p=0.8, grayscale 0.2, blur p=0.5.
E2MC: normal-CDF squash on the un-normalised 128-d head output of the two 224 crops, beta 1,
gamma 25; 10 epochs, batch 512, 0.01 x the base lr, constant; the prototypes are not frozen
and the queue is used from the start (the release is past both).

Not as the paper: SwAV's six 96x96 crops are not forwarded (multi-crop is a later addition to
the loop); the two 224 crops are the ones E2MC acts on in either case.

Variants: ``smoke`` (CI: narrow ResNet-50, 64 px, 6 steps, from a checkpoint the test
writes), ``continued`` (no E2MC); E2MC's ablation criteria in E2MC's place (paper Table 3,
the official ablation scripts' weights): ``vc`` (variance-covariance on the two 224 crops,
mu 0.1, nu 0.001), ``au`` (uniformity over each crop's pairs, t 2, lambda 0.5), ``mmcr``
(nuclear norm of the view centroids over all forwarded views, lambda 0.005; the official
script also averages the six 96-px crops: add ``--config.aug.num_local=6
--config.aug.local_size=96`` for them).
"""

from mecjax import configlib

common = configlib.import_beside(__file__, "common")   # the shared recipe fragments


def get_config(arg: str | None = None):
  c = configlib.base()
  c.method = "swav"
  c.model.name = "resnet50"
  c.model.zero_init_residual = True
  c.projector.hidden = (2048,)
  c.projector.out_dim = 128
  c.projector.out_bn = None
  c.projector.out_bias = True
  c.predictor.out_dim = 0
  c.swav.num_prototypes = 3000
  c.swav.temperature = 0.1
  c.swav.epsilon = 0.05
  c.swav.iterations = 3
  c.swav.queue_size = 3840
  common.imagenet_data(c)
  c.aug.crop_scale = (0.14, 1.0)
  c.aug.jitter = (0.8, 0.8, 0.8, 0.2)
  c.aug.blur_prob = (0.5, 0.5)
  c.aug.solarize_prob = (0.0, 0.0)
  c.optim.name = "lars"
  c.optim.base_lr = 0.3
  c.optim.weight_decay = 1e-6
  c.optim.trust_coefficient = 0.001
  c.optim.exclude_1d = True
  common.e2mc_continuation(c, beta=1.0, gamma=25.0, transform="gaussian_cdf", epochs=10,
                               eps=common.FLOAT32_EPS)
  c.log_every_steps = 100
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = 5
  return configlib.apply_variants(c, arg, VARIANTS)


def smoke(c):
  common.e2mc_imagenet_smoke(c)
  c.projector.hidden = (64,)
  c.projector.out_dim = 32
  c.swav.num_prototypes = 32
  c.swav.queue_size = 64


VARIANTS = {"smoke": smoke, "continued": common.continued,
            **common.E2MC_ABLATION_VARIANTS}
