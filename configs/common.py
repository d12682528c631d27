"""Recipe fragments the config files share: data sets, the size of the smoke and cpu variants,
solo-learn's CIFAR recipe, E2MC's continuation and its ablation criteria, and the offline
evaluation protocols. Each is a function that sets keys of a config (``base()`` of
``mecjax.configlib``) and says which recipe it is; a config file calls the ones it uses,
in order, and sets what is its own after them.

A config imports this file by path, ``common = configlib.import_beside(__file__, "common")``,
so it works from a checkout, from any working directory, and under every loader.
"""

# ------------------------------------------------------------------ pre-training data
# The CIFAR-10 configs share their data, the size of their smoke and cpu variants, and (the
# baselines) solo-learn's CIFAR recipe; each config file states only what is its own.


def solo_learn_cifar(c) -> None:
  """solo-learn's CIFAR-10 pre-training setup (``scripts/pretrain/cifar/*.yaml``): CIFAR
  ResNet-18, batch 256, 1000 epochs, 10-epoch warm-up then cosine, LARS (eta 0.02, biases
  and norm parameters excluded) unless the method's file says otherwise, SyncBN, crops of
  scale 0.08-1. Learning rate, weight decay, heads and colour strength are per method."""
  c.model.name = "resnet18_cifar"
  c.model.width = 1.0
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.aug.name = "cifar"
  c.aug.crop_scale = (0.08, 1.0)
  c.aug.blur_prob = (0.0, 0.0)
  c.aug.solarize_prob = (0.0, 0.2)
  c.batch_size = 256
  c.total_epochs = 1000
  c.optim.name = "lars"
  c.optim.trust_coefficient = 0.02
  c.optim.exclude_1d = True
  c.optim.warmup_epochs = 10
  c.log_every_steps = 50
  c.checkpoint.every_epochs = 10
  c.knn.every_epochs = 10


def cifar_smoke(c) -> None:
  """A tiny network on 256 images for 12 steps: under a minute on a 2-core CPU (CI)."""
  c.model.width = 0.125
  # One block per stage (a ResNet-10 of the config's block type): every block kind, with
  # and without a downsampling shortcut, in about 0.8x the whole run's time of two blocks
  # (tracing and compilation are most of a smoke run; benchmarks/RESULTS.md, "Test suite").
  # The smoke runs are code paths, not encoders to export: torchvision depths are the
  # other variants'.
  if not c.model.name.startswith("vit"):
    c.model.stage_sizes = (1, 1, 1, 1)
  # The plain kernels, the program a GPU or TPU runs: a smoke run is a few steps, so its
  # time is compilation, and the XLA:CPU kernels (model.kernels 'auto' on a CPU) compile in
  # about 1.3x the time (first step 17.3 s against 12.9 s, SwAV smoke, 2026-12-02).
  c.model.kernels = "xla"
  c.data.max_train_examples = 256
  c.data.max_eval_examples = 128
  c.batch_size = 32
  c.eval_batch_size = 64
  c.total_epochs = None
  c.total_steps = 12
  c.optim.warmup_epochs = None
  c.optim.warmup_steps = 2
  c.mec.lamda_warmup_epochs = None
  c.mec.lamda_warmup_steps = 4
  c.log_every_steps = 2
  c.checkpoint.every_epochs = None
  c.checkpoint.every_steps = 5
  c.knn.every_epochs = None
  c.knn.k = 20


# The one budget of every method's `cpu` variant (benchmarks/bench_methods.py compares them
# under it): 6 epochs, 1170 steps of batch 256, what the MEC `cpu` variant trains in 18
# minutes on a 2-core Zen 5 VM (an estimated 16-20 minutes for every method there, from
# their speeds; about twice that on the slower VMs).
CPU_EPOCHS = 6


def cifar_cpu(c, epochs: float = CPU_EPOCHS) -> None:
  """Width-0.25 CIFAR ResNet-18 at 32x32, batch 256, half-epoch warm-up, kNN at the end:
  sized for the shared CIFAR-10 on a 2-core CPU (``epochs``: the cpu variants' one budget
  unless a variant says otherwise)."""
  c.model.width = 0.25
  c.batch_size = 256
  c.total_epochs = epochs
  c.optim.warmup_epochs = 0.5
  c.mec.lamda_warmup_epochs = 1
  c.log_every_steps = 20
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = None


def imagenet_data(c) -> None:
  """ImageNet at 224 (tfds ``imagenet2012`` or ``data.path``): host-side crops (MoCo v3 /
  VICReg / BYOL recipe), ImageNet mean and std; kNN on a 100k-image bank."""
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  # Per host: decode + 2 crops cost ~3.8 ms of one (loaded, shared) core per image, i.e.
  # ~3.8 cores per 1,000 images/s (benchmarks/RESULTS.md, "Host input"): an 8-GPU host at
  # ~10,000 images/s wants ~40 cores, so 32 worker processes of 2 reading threads each.
  c.data.host_workers = 32
  c.data.host_threads = 2
  c.aug.name = "mocov3"
  c.aug.blur_prob = (1.0, 0.1)
  c.aug.solarize_prob = (0.0, 0.2)
  c.aug.mean = (0.485, 0.456, 0.406)
  c.aug.std = (0.229, 0.224, 0.225)
  c.knn.max_train_examples = 100_000
  c.eval_batch_size = 1024


def imagenet_smoke(c) -> None:
  """The ImageNet recipe's code path (host crops at 64 px from files) on 256 images of any
  local folder with train/ and test/ splits, 10 steps (CI: the shared CIFAR-10)."""
  cifar_smoke(c)
  c.data.image_size = 64
  c.data.in_memory = False
  c.data.eval_split = "test"
  c.data.host_threads = 4
  c.data.host_workers = 0
  c.total_steps = 10
  c.knn.max_train_examples = None


# float32 machine epsilon (np.finfo(np.float32).eps): the E2MC SwAV and SimSiam scripts' eps
# inside the m-spacings log (the VICReg launcher passes 1e-7).
FLOAT32_EPS = 2.0 ** -23


def e2mc_continuation(c, *, beta: float, gamma: float, transform: str, epochs: float,
                      eps: float = 1e-7, lr_fraction: float = 0.01,
                      batch_size: int = 512) -> None:
  """E2MC continued pre-training on top of a base method's config ``c``, as the official
  E2MC code runs it: the base loss plus E2MC, ``epochs`` more epochs at ``lr_fraction`` x the
  base learning rate, kept constant (no warm-up, no decay: the official code fixes it),
  batch ``batch_size``, everything else as the base method. ``continued()`` turns E2MC off
  for the ablation."""
  c.regularizer.name = "e2mc"
  c.regularizer.weight = 1.0
  c.e2mc.beta = beta
  c.e2mc.gamma = gamma
  c.e2mc.transform = transform
  c.e2mc.eps = eps
  c.optim.schedule = "official"   # constant either way; the official code's convention
  c.optim.base_lr = c.optim.base_lr * lr_fraction
  c.optim.warmup_steps = None
  c.optim.warmup_epochs = None
  c.optim.end_lr_factor = 1.0
  c.batch_size = batch_size
  c.total_steps = None
  c.total_epochs = epochs
  c.init.heads = True
  c.init.required = True
  # The official continuation restores the epoch counter; our step restarts at 0, so the
  # schedules that count from the start are set as they stand late in the base run.
  c.swav.freeze_prototypes_steps = None
  c.swav.freeze_prototypes_epochs = None
  c.swav.queue_start_steps = None
  c.swav.queue_start_epochs = None
  c.mec.lamda_warmup_steps = None
  c.mec.lamda_warmup_epochs = None


def continued(c) -> None:
  """The "continued" ablation: the same run without the E2MC terms."""
  c.regularizer.name = None


# E2MC's ablation (paper Table 3, Appendix A): the same continuation with another criterion
# in E2MC's place, each weighted as the paper states (mecjax/losses/ablation.py).


def ablation_vc(c) -> None:
  """VICReg's variance-covariance terms on the two global crops: mu 0.1, nu 0.001."""
  c.regularizer.name = "vc"
  c.regularizer.weight = 1.0
  c.vc.std_weight = 0.1
  c.vc.cov_weight = 0.001


def ablation_au(c) -> None:
  """Uniformity (t 2) over each global crop's pairs, lambda 0.5."""
  c.regularizer.name = "au"
  c.regularizer.weight = 0.5
  c.au.t = 2.0


def ablation_mmcr(c) -> None:
  """MMCR: minus the nuclear norm of the view centroids over all views, lambda 0.005."""
  c.regularizer.name = "mmcr"
  c.regularizer.weight = 0.005


E2MC_ABLATION_VARIANTS = {"vc": ablation_vc, "au": ablation_au, "mmcr": ablation_mmcr}


def e2mc_base_variant(arg: str | None) -> str:
  """The variant of the base method's CIFAR-10 config an E2MC CIFAR config continues:
  ``smoke`` (CI) or ``colab_gpu`` when ``arg`` names it, else ``cpu`` (our base runs). The
  continuation reads that run from ``runs/<method>_cifar10_<variant>`` by default."""
  names = [n for n in (arg or "").split(",") if n]
  return next((v for v in ("smoke", "colab_gpu") if v in names), "cpu")


def e2mc_cifar_smoke(c) -> None:
  """6 steps at batch 32 from the base's smoke checkpoint (the base config is its smoke
  variant already)."""
  c.batch_size = 32
  c.total_epochs = None
  c.total_steps = 6
  c.checkpoint.every_epochs = None
  c.checkpoint.every_steps = 3


def e2mc_short(c) -> None:
  """One epoch: the benchmark's budget."""
  if c.total_epochs is not None:
    c.total_epochs = 1


# The variants every E2MC CIFAR-10 config has (comma-separated, composable).
E2MC_CIFAR_VARIANTS = {"smoke": e2mc_cifar_smoke, "short": e2mc_short, "continued": continued}


def e2mc_imagenet_smoke(c) -> None:
  """The ImageNet E2MC configs' code path at smoke size: a narrow ResNet-50 at 64 px on 256
  images of any local folder with train/ and test/ splits, 6 steps at batch 32, from the
  checkpoint ``init.torch`` / ``init.workdir`` names (CI writes a release-layout one)."""
  imagenet_smoke(c)
  c.batch_size = 32
  c.total_epochs = None
  c.total_steps = 6
  c.checkpoint.every_steps = 3


# --------------------------------------------------------- offline evaluation recipes
# Shared by configs/linear_*.py, semisup_*.py and transfer_linear.py: the encoder comes from
# config.init (its architecture from the run, see mecjax/evaluators/downstream.py).


def evaluation(c, task: str) -> None:
  """An evaluation run (``task`` "linear" or "finetune") of the encoder ``config.init``
  names: one augmented view per image, the recipe's random-resized crop (scale 0.08-1,
  torchvision's default, as the MEC / MoCo v3 probe and SimCLR's fine-tuning use) and flip,
  no colour operations; no kNN monitor, no online probe, no warm-up."""
  c.task = task
  c.init.heads = False
  c.init.required = True
  c.aug.crop_scale = (0.08, 1.0)
  c.aug.num_global_views = 1
  c.aug.blur_prob = (0.0,)
  c.aug.solarize_prob = (0.0,)
  c.knn.enabled = False
  c.probe.enabled = False
  c.optim.warmup_steps = None
  c.optim.warmup_epochs = None
  c.optim.end_lr_factor = 0.0


def mec_linear_probe(c) -> None:
  """The official MEC linear probe (``main_lincls``): frozen encoder, BN(no affine, eps
  1e-6) + Linear, SGD momentum 0.9, lr 0.03 x batch/256, weight decay 0, batch 4096,
  100 epochs, cosine per step."""
  evaluation(c, "linear")
  c.linear.bn_eps = 1e-6
  c.batch_size = 4096
  c.total_steps = None
  c.total_epochs = 100
  c.optim.name = "sgd"
  c.optim.base_lr = 0.03
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.log_every_steps = 100
  c.checkpoint.every_epochs = 10


def lars_probe(c) -> None:
  """The recipe's LARS option: the same learning rate, trust coefficient 0.001, biases and
  norm parameters excluded (as SimSiam's / MoCo v3's LARS probe)."""
  c.optim.name = "lars"
  c.optim.trust_coefficient = 0.001
  c.optim.exclude_1d = True


def semisup_finetune(c) -> None:
  """The MEC appendix's semi-supervised fine-tuning: the whole network and a new linear
  head, SGD momentum 0.9, lr 0.05 at batch 1024 (base_lr 0.0125 x batch/256), weight decay
  0, 50 epochs, cosine per step."""
  evaluation(c, "finetune")
  c.batch_size = 1024
  c.total_steps = None
  c.total_epochs = 50
  c.optim.name = "sgd"
  c.optim.base_lr = 0.05 * 256 / 1024
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.log_every_steps = 20
  c.checkpoint.every_epochs = 10


def evaluation_smoke(c, max_train: int = 256) -> None:
  """CI size for an evaluation config: at most ``max_train`` training images, 128 eval
  images, batch 32, 8 steps, a checkpoint half-way."""
  c.data.max_train_examples = min(c.data.max_train_examples or max_train, max_train)
  c.data.max_eval_examples = 128
  c.batch_size = 32
  c.eval_batch_size = 64
  c.total_epochs = None
  c.total_steps = 8
  c.log_every_steps = 2
  c.checkpoint.every_epochs = None
  c.checkpoint.every_steps = 4
  c.optim.warmup_steps = None   # (cifar_smoke warms up; an evaluation does not)
  c.optim.warmup_epochs = None
