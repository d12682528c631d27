"""The one schema of every config key, and the helpers configs and the loop share.

Config files start from ``base()`` and override what they need. ``base()`` returns a
*locked* ConfigDict: assigning a key that is not listed here raises at once, in the file or
on the command line (``--config.optim.lr=...`` names ``lr`` and the keys that exist), so a
misspelt key never silently does nothing. Keys that later issues need are added here, with
their default, in the same change that reads them.

Durations are given in steps or in epochs (``total_steps`` / ``total_epochs``,
``warmup_steps`` / ``warmup_epochs``, ...); ``duration()`` resolves either.
"""

from __future__ import annotations

import difflib
import os

import ml_collections
from ml_collections import config_dict

placeholder = config_dict.placeholder


class ConfigError(ValueError):
  """A config value is wrong; the message names the key and what was expected."""


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = "mec"                    # mecjax.methods.METHODS
  # What mecjax.main runs: "pretrain" (mecjax.train), "linear" (offline linear probe of the
  # frozen encoder config.init names: mecjax.evaluators.linear) or "finetune" (the whole
  # encoder + a new linear head: mecjax.evaluators.finetune).
  c.task = "pretrain"
  c.batch_size = 512                  # global, over every device of every process
  c.total_steps = placeholder(int)
  c.total_epochs = placeholder(float)
  c.log_every_steps = 50

  c.model = dict(name="resnet18_cifar", width=1.0, zero_init_residual=True,
                 # computation dtype: float32 | bfloat16 (parameters, optimiser state and
                 # every loss stay float32; README "Mixed precision")
                 dtype="float32",
                 # convolution / BatchNorm kernels: "auto" (those tuned for XLA:CPU where the
                 # step is lowered for the CPU, plain XLA ones on GPU/TPU), "cpu", "xla";
                 # the same parameters and checkpoints whichever (mecjax/models/resnet.py)
                 kernels="auto",
                 # ViT encoders only (mecjax/models/vit.py; a ResNet refuses them). Unset:
                 # the named size's (vit_small: 16, 12 blocks, 12 heads); width above
                 # multiplies the named embedding width.
                 patch_size=placeholder(int), depth=placeholder(int),
                 num_heads=placeholder(int),
                 stop_grad_patch_embed=placeholder(bool))   # MoCo v3's frozen random patch
                                                            # projection; unset: trained
  c.projector = dict(hidden=(2048,), out_dim=2048, out_bn="no_affine", out_bias=True)
  c.predictor = dict(hidden=(512,), out_dim=2048, out_bn=placeholder(str), out_bias=True)

  c.data = dict(
      name="cifar10",                 # tfds name, used when data.path is unset
      path=placeholder(str),          # local folder or .tar/.tar.gz of <split>/<class>/<img>
      data_dir=placeholder(str),      # tfds data_dir
      train_split="train",
      eval_split="test",              # kNN queries and probe accuracy
      image_size=32,                  # side of the views and eval images the network sees
      stored_size=placeholder(int),   # in-memory data: side images are kept at (crops are
                                      # taken from it); default image_size
      max_train_examples=placeholder(int),  # deterministic class-balanced subset
      max_eval_examples=placeholder(int),
      in_memory=placeholder(bool),    # decode the whole split once; default: image_size <= 64
      host_threads=8,                 # reading threads (per worker process if host_workers)
      host_workers=0,                 # host worker processes decoding and cropping (grain
                                      # multiprocessing; the same batches for any count);
                                      # 0: in this process (CPU runs, tests)
      prefetch_batches=4,
  )
  c.aug = dict(
      name="cifar",                   # mecjax.data.augment.RECIPES
      crop_scale=(0.2, 1.0),          # of the global views (multicrop variants narrow it)
      jitter=(0.4, 0.4, 0.2, 0.1),    # brightness, contrast, saturation, hue (torchvision)
      jitter_prob=0.8,
      grayscale_prob=0.2,
      blur_prob=(0.0, 0.0),           # per global view (their number is this tuple's length)
      solarize_prob=(0.0, 0.2),       # per global view
      mean=(0.4914, 0.4822, 0.4465),
      std=(0.2470, 0.2435, 0.2616),
      # Multi-crop (SwAV): num_local small views per image after the global ones, forwarded
      # as one batch; each method pairs them by the rule in its docstring (or refuses them).
      num_local=0,                    # 0: the global views only
      local_size=placeholder(int),    # side of the local views; required when num_local > 0
      local_crop_scale=(0.05, 0.14),  # their crop area range (SwAV: 96 px at (0.05, 0.14))
      local_blur_prob=0.0,            # every local view (SwAV/DINO: blur p=0.5 at 96 px)
      local_solarize_prob=0.0,        # every local view (SwAV/DINO: none)
      # Host crops from JPEG files (aug.name="mocov3"): decode at 1/2, 1/4, 1/8 scale in the
      # DCT domain when every crop is still >= its output side there (PIL draft); changes
      # those images' pixels slightly (benchmarks/RESULTS.md, "Host input"). False: full decode.
      jpeg_draft=True,
  )

  c.optim = dict(
      name="sgd",                     # sgd | lars | adamw
      base_lr=0.03,                   # lr = base_lr x batch_size / 256
      end_lr_factor=0.0,              # cosine ends at end_lr_factor x lr
      warmup_steps=placeholder(int),
      warmup_epochs=placeholder(float),
      # Warm-up convention (mecjax.optim.warmup_cosine): "optax" reaches base_lr at step W
      # (solo-learn, MoCo v3); "official" is the MEC / E2MC code's np.linspace(0, lr, W),
      # base_lr at step W-1 (the MEC and E2MC configs set it).
      schedule="optax",
      momentum=0.9,
      nesterov=False,
      weight_decay=5e-4,
      exclude_1d=False,               # no decay / adaptation on biases and norm params
      trust_coefficient=0.001,        # lars
      b1=0.9, b2=0.999,               # adamw
  )
  c.ema = dict(momentum=0.996, final_momentum=1.0)  # cosine per step; 0: weight sharing

  c.mec = dict(
      eps_sq=64.0,                    # official --eps: lamda_inv = batch * eps_sq / out_dim
      order=4,
      lamda_warmup_factor=8.0,        # lamda_inv warms up from factor x lamda_inv
      lamda_warmup_steps=placeholder(int),
      lamda_warmup_epochs=placeholder(float),
      # "taylor": the official order-n series (diverges once ||C||_2 > 1); "logdet": the
      # exact -(lamda_inv/m) log|det(I + C)| it approximates, bounded (losses.mec_logdet).
      objective="taylor",
      # Adaptive lamda_inv (method mec only): after each step lamda_inv's multiplier becomes
      # max(1, scale ||C||_2 / adapt_bound) (losses.adapt_lamda_scale), kept in the method
      # state; None: off. The series converges for ||C||_2 < 1.
      adapt_bound=placeholder(float),
  )

  # Each method's own constants (METHODS.md; mecjax/methods/<family>.py says what they mean).
  c.music = dict(segment_size=32, temperature=1.0, invariance_weight=1.0)
  c.barlow_twins = dict(lambd=0.0051, scale=1.0)
  c.vicreg = dict(sim_weight=25.0, var_weight=25.0, cov_weight=1.0)
  c.simclr = dict(temperature=0.2)
  c.swav = dict(num_prototypes=3000, temperature=0.1, epsilon=0.05, iterations=3,
                queue_size=3840,      # rounded down to a multiple of the global batch; 0: none
                queue_start_steps=placeholder(int), queue_start_epochs=placeholder(float),
                freeze_prototypes_steps=placeholder(int),
                freeze_prototypes_epochs=placeholder(float))
  # An additive regulariser: None, "mec" (on the method's embedding pairs; reads config.mec),
  # "e2mc" (on the online embeddings of the two global views; reads config.e2mc) or one of
  # E2MC's ablation criteria "vc" / "au" / "mmcr" (config.vc, config.au);
  # loss = objective + weight x regulariser.
  c.regularizer = dict(name=placeholder(str), weight=1.0)
  # E2MC: gamma (Cov1 + Cov2) - beta (H1 + H2) / 2 on the squashed embeddings (METHODS.md).
  c.e2mc = dict(beta=1.0, gamma=1.0, transform="sigmoid", eps=1e-7)
  # E2MC's ablation criteria (regularizer.name "vc" | "au" | "mmcr"; losses/ablation.py).
  # vc: std_weight x VICReg's std hinge + cov_weight x its covariance, in the "hypersphere"
  # (L2-normalised, std target 1/sqrt(D)) or "projector" (raw, target 1) space.
  c.vc = dict(std_weight=0.1, cov_weight=0.001, space="hypersphere")
  # au: uniformity at temperature t over each view's pairs, + align_weight x alignment.
  c.au = dict(t=2.0, align_weight=0.0)

  # Start a new run from trained weights (continued pre-training, probes): a mecjax run
  # directory (its latest checkpoint, or init.step) or a PyTorch checkpoint file in
  # torchvision key layout (VICReg / SwAV / SimSiam releases). The encoder is always loaded;
  # the heads too when init.heads and both sides have them with the same shapes. Ignored
  # when the run's own workdir already holds a checkpoint (that is a resume).
  c.init = dict(workdir=placeholder(str), step=placeholder(int), torch=placeholder(str),
                heads=True,
                required=False)       # the config continues trained weights: refuse none


  c.checkpoint = dict(every_steps=placeholder(int), every_epochs=placeholder(float), keep=3,
                      # Multi-process runs agree on a stop request (SIGTERM / SIGINT /
                      # SIGUSR1) every this many steps, with a small all-gather read one
                      # interval later (mecjax/preemption.py); one process checks every step.
                      stop_check_every_steps=10)
  c.knn = dict(enabled=True, every_steps=placeholder(int), every_epochs=placeholder(float),
               k=200, temperature=0.1, max_train_examples=placeholder(int))
  c.probe = dict(enabled=True, lr=0.1, momentum=0.9, weight_decay=0.0)
  # Evaluators of pre-training, by name (mecjax/evaluators/registry.py): each entry's
  # ``type`` is a module of mecjax/evaluators (None: off), run every ``every_steps`` /
  # ``every_epochs`` and at the last step. Unset fields fall back to the older sections,
  # which keep their meaning: the cadence to config.knn.every_* (unset too: the last step
  # only); knn's k, temperature and max_train_examples to config.knn's; config.knn.enabled
  # and config.probe.enabled still switch the two off. So config.knn.* sets both monitors
  # and an entry here overrides it for one. knn_top1: weighted kNN of the eval split
  # against the training split's features; probe_top1: the online probe on the eval split.
  c.evals = dict(
      knn=dict(type="knn", every_steps=placeholder(int), every_epochs=placeholder(float),
               k=placeholder(int), temperature=placeholder(float),
               max_train_examples=placeholder(int)),
      probe=dict(type="probe", every_steps=placeholder(int), every_epochs=placeholder(float)),
      # Off unless type="linear": a linear softmax probe on un-augmented features of the
      # training split (max_train_examples; unset: config.knn's), standardised, trained
      # for `epochs` by SGD; linear_top1 / linear_top5 of the eval split.
      linear=dict(type=placeholder(str), every_steps=placeholder(int),
                  every_epochs=placeholder(float), epochs=10, lr=0.1, batch_size=256,
                  max_train_examples=placeholder(int)),
  )
  # Offline linear probe (task "linear"; mecjax/evaluators/linear.py): BN without affine,
  # then Linear, on the frozen encoder's features; optim / batch_size / total_* are its own.
  c.linear = dict(
      cache_features=False,   # train on un-augmented features computed once (DIR/features)
      bn_eps=1e-6,            # of the BN before the linear layer (MEC / MoCo v3 probe)
      metric="top1",          # headline metric: top1 | mean_per_class | map11 (VOC2007)
      multi_label=False,      # labels are sets (tfds 'labels'): sigmoid cross-entropy
  )
  c.eval_batch_size = 512
  c.lock()
  return c


# Keys that must be > 0 when set (None: unset), and keys that must be >= 0.
POSITIVE = ("batch_size", "eval_batch_size", "total_steps", "total_epochs", "log_every_steps",
            "optim.base_lr", "checkpoint.every_steps", "checkpoint.every_epochs",
            "checkpoint.keep", "checkpoint.stop_check_every_steps", "knn.every_steps",
            "knn.every_epochs", "knn.k", "data.image_size", "data.max_train_examples",
            "data.max_eval_examples", "data.host_threads")
NON_NEGATIVE = ("optim.warmup_steps", "optim.warmup_epochs", "optim.weight_decay",
                "optim.end_lr_factor", "optim.momentum", "probe.lr", "data.prefetch_batches")


def validate(config) -> None:
  """Stop with one line naming the first key whose value cannot make sense: a learning rate,
  batch size, duration or interval that is zero or negative (train.run and the offline
  evaluations call it first, before any data is read)."""
  for keys, ok, expected in ((POSITIVE, lambda v: v > 0, "> 0"),
                             (NON_NEGATIVE, lambda v: v >= 0, ">= 0")):
    for key in keys:
      value = config
      for part in key.split("."):
        value = value.get(part) if value is not None else None
      if value is None or isinstance(value, bool):
        continue
      if not isinstance(value, (int, float)) or value != value or not ok(value):
        raise ConfigError(f"config.{key}={value!r}: expected a number {expected}")


def apply_variants(config: ml_collections.ConfigDict, arg: str | None,
                   variants: dict) -> ml_collections.ConfigDict:
  """Apply the comma-separated variants in ``arg`` (``"smoke"``, ``"cpu"``, ...) in order."""
  for name in filter(None, (arg or "").split(",")):
    if name not in variants:
      raise ConfigError(f"unknown config variant {name!r}: expected one of {sorted(variants)}")
    variants[name](config)
  return config


def load(spec: str, variant: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(variant)`` of a config file, as ``--config=spec`` loads it.

  ``spec`` is ``PATH`` or ``PATH:VARIANT`` (the form of the command line); ``variant``, when
  given, is used instead of the one in ``spec``.
  """
  import importlib.util
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "mecjax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant if variant is not None else (arg or None))


CONFIG_FILE = "config.json"


def save(config, workdir: str) -> None:
  """Write ``config`` as JSON into ``workdir`` (read back by ``load_run``)."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def load_run(workdir: str) -> ml_collections.ConfigDict:
  """The config a run directory was trained with: its ``config.json`` over ``base()`` (keys
  added to the schema since keep their defaults); sequences come back as tuples."""
  import json
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ConfigError(f"{workdir!r} has no {CONFIG_FILE}: not a mecjax run directory (or one "
                      "written before runs saved their config)")
  with open(path) as f:
    saved = json.load(f)
  config = base()
  config.unlock()

  def merge(cfg, values, prefix):
    for key, value in values.items():
      if isinstance(value, dict) and key in cfg and isinstance(cfg[key],
                                                               ml_collections.ConfigDict):
        merge(cfg[key], value, f"{prefix}{key}.")
      else:
        cfg[key] = tuple(value) if isinstance(value, list) else value
  merge(config, saved, "")
  return config


def duration(cfg, name: str, steps_per_epoch: float, default: int | None = None) -> int | None:
  """Resolve ``cfg.<name>_steps`` or ``cfg.<name>_epochs`` (exactly one may be set) to steps."""
  steps, epochs = cfg.get(f"{name}_steps"), cfg.get(f"{name}_epochs")
  if steps is not None and epochs is not None:
    raise ConfigError(f"config sets both {name}_steps={steps} and {name}_epochs={epochs}: "
                      "keep one")
  if steps is not None:
    return int(steps)
  if epochs is not None:
    return int(round(epochs * steps_per_epoch))
  return default


def unknown_key_message(config: ml_collections.ConfigDict, dotted: str) -> str:
  """One line for a key that is not in the schema, with the nearest existing keys."""
  known = sorted(_flatten(config))
  near = difflib.get_close_matches(dotted, known, n=3, cutoff=0.6)
  section = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
  if not near and section:
    near = [k for k in known if k.startswith(section)][:8]
  hint = f"; did you mean {' or '.join(near)}?" if near else ""
  return f"config key {dotted!r} does not exist{hint}"


def unknown_override(args) -> str | None:
  """The first ``--config.KEY=VALUE`` argument whose dotted KEY is not in the schema."""
  schema = base()
  for arg in args:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node = schema
    for part in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        return path
      node = node[part]
  return None


def _flatten(cfg, prefix=""):
  for key, value in cfg.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flatten(value, path + ".")
    else:
      yield path


# ------------------------------------------------------- shared CIFAR-10 recipe parts
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


def cifar_cpu(c, epochs: float) -> None:
  """Width-0.25 CIFAR ResNet-18 at 32x32, batch 256, half-epoch warm-up, kNN at the end:
  sized for the shared CIFAR-10 on a 2-core CPU (``epochs`` from each method's speed)."""
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
  """E2MC continued pre-training on top of a base method's config ``c`` (METHODS.md): the
  base loss plus E2MC, ``epochs`` more epochs at ``lr_fraction`` x the base learning rate,
  kept constant (no warm-up, no decay: the official code fixes it), batch ``batch_size``,
  everything else as the base method. ``continued()`` turns E2MC off for the ablation."""
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


def e2mc_cifar(base_file: str, arg: str | None, *, beta: float, gamma: float,
               transform: str, eps: float = 1e-7,
               variants: dict | None = None) -> ml_collections.ConfigDict:
  """E2MC continued pre-training on CIFAR-10 from our own checkpoint of a base method.

  ``base_file`` is the base method's config (``configs/<method>_cifar10.py``); the run
  continues its ``cpu`` variant (``smoke`` with the ``smoke`` variant), read from
  ``init.workdir`` (default ``runs/<method>_cifar10_cpu``, where the README's base command
  writes it). Protocol as on ImageNet: 10 epochs, batch 512, 0.01 x the base learning rate,
  constant. Variants (``E2MC_CIFAR_VARIANTS``, comma-separated, composable): ``smoke`` (CI),
  ``short`` (1 epoch: the benchmark's budget), ``continued`` (the same run without E2MC),
  and the config's own ``variants`` (e.g. ``colab_gpu``, which also continues the base's
  ``colab_gpu`` variant).
  """
  names = [n for n in (arg or "").split(",") if n]
  base_variant = next((v for v in ("smoke", "colab_gpu") if v in names), "cpu")
  c = load(base_file, base_variant)
  e2mc_continuation(c, beta=beta, gamma=gamma, transform=transform, epochs=10, eps=eps)
  c.init.workdir = f"runs/{c.method}_cifar10_{base_variant}"
  c.checkpoint.every_epochs = 1
  c.knn.every_epochs = None
  return apply_variants(c, arg, {**E2MC_CIFAR_VARIANTS, **(variants or {})})


def _e2mc_cifar_smoke(c) -> None:
  """6 steps at batch 32 from the base's smoke checkpoint (the base config is its smoke
  variant already)."""
  c.batch_size = 32
  c.total_epochs = None
  c.total_steps = 6
  c.checkpoint.every_epochs = None
  c.checkpoint.every_steps = 3


def _e2mc_short(c) -> None:
  """One epoch: the benchmark's budget."""
  if c.total_epochs is not None:
    c.total_epochs = 1


E2MC_CIFAR_VARIANTS = {"smoke": _e2mc_cifar_smoke, "short": _e2mc_short,
                       "continued": continued}


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
