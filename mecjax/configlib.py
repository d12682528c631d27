"""The schema of every config key, its validation, loading and saving, durations, and the
one-line messages for a bad key.

Config files (``configs/``: recipes, their shared fragments in ``configs/common.py``) start
from ``base()`` and override what they need. ``base()`` returns a *locked* ConfigDict:
assigning a key that is not in the schema raises at once, in the file or on the command line
(``--config.optim.lr=...`` names ``lr`` and the keys that exist), so a misspelt key never
silently does nothing. The schema is the loop-level keys listed in ``base()`` plus one block
per method and regulariser that declares one (``config.mec``, ``config.swav``, ...: each
method's ``defaults()`` in ``mecjax/methods/``), so a new method adds its keys in its own file.

Durations are given in steps or in epochs (``total_steps`` / ``total_epochs``,
``warmup_steps`` / ``warmup_epochs``, ...); ``duration()`` resolves either.
"""

from __future__ import annotations

import difflib
import os

import ml_collections
from ml_collections import config_dict

# ConfigError and duration live below the schema (the methods raise and use them, and the
# schema imports the methods); they are part of this module's interface all the same.
from mecjax.configvalues import ConfigError, duration  # noqa: F401

placeholder = config_dict.placeholder


def base() -> ml_collections.ConfigDict:
  """The schema: every key with its default, locked. The loop-level keys are listed here;
  each method's and regulariser's own block comes from ``mecjax.methods.config_blocks()``."""
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
                 # ResNets only: blocks in each of the four stages; unset: the named depth's
                 # (resnet18 (2, 2, 2, 2), resnet50 (3, 4, 6, 3)). Others do not export to
                 # torchvision.
                 stage_sizes=placeholder(tuple),
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
      # Global views per image (the ones every method pairs and every monitor reads); the
      # per-view tuples below need exactly this many entries.
      num_global_views=2,
      blur_prob=(0.0, 0.0),           # per global view
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
      # lars: solo-learn's clip_lr (a tensor moves by min(trust ratio, lr) x its gradient;
      # mecjax.optim.scale_by_clipped_trust_ratio); False: optax.lars (lr x trust ratio).
      lars_clip_lr=False,
      b1=0.9, b2=0.999,               # adamw
  )
  c.ema = dict(momentum=0.996, final_momentum=1.0)  # cosine per step; 0: weight sharing

  # An additive regulariser: None, "mec" (on the method's embedding pairs; reads config.mec),
  # "e2mc" (on the online embeddings of the two global views; reads config.e2mc) or one of
  # E2MC's ablation criteria "vc" / "au" / "mmcr" (config.vc, config.au);
  # loss = objective + weight x regulariser (mecjax.methods.REGULARIZERS).
  c.regularizer = dict(name=placeholder(str), weight=1.0)

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
  _add_method_blocks(c)
  c.lock()
  return c


def _add_method_blocks(c) -> None:
  """Each registered method's / regulariser's own block (``config.mec``, ``config.swav``,
  ``config.e2mc``, ...), from the module that reads it."""
  from mecjax import methods   # imported here: ``import configlib`` stays free of JAX
  for key, defaults in methods.config_blocks().items():
    if key in c:
      raise ValueError(f"config block {key!r} of a method clashes with the schema's own "
                       f"config.{key}: rename the method's block")
    c[key] = defaults


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
  batch size, duration or interval that is zero or negative, a per-view augmentation tuple
  whose length is not ``aug.num_global_views`` (train.run and the offline evaluations call
  it first, before any data is read)."""
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
  global_views(config.aug)


# The aug keys that hold one entry per global view.
PER_GLOBAL_VIEW = ("blur_prob", "solarize_prob")


def global_views(aug) -> int:
  """``aug.num_global_views``, checked: a positive int, and every per-view tuple
  (``PER_GLOBAL_VIEW``) with that many entries; else one line naming the keys."""
  n = aug.num_global_views
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ConfigError(f"config.aug.num_global_views={n!r}: expected an int >= 1")
  wrong = [f"config.aug.{k}={tuple(aug[k])!r}" for k in PER_GLOBAL_VIEW if len(aug[k]) != n]
  if wrong:
    raise ConfigError(f"{' and '.join(wrong)}: expected one entry per global view, "
                      f"config.aug.num_global_views={n}")
  return n


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


def import_beside(config_file: str, name: str):
  """The module ``name`` (``"common"``) from the folder of ``config_file`` (a config's
  ``__file__``): how a config reads the fragments it shares with its neighbours.

  By path, not through ``sys.path``: ml_collections' ``--config`` flag and ``load`` execute a
  config file by path without putting its folder on the import path, from any working
  directory, and a top-level module called ``common`` could be some other package's. One
  module object per file, so every config of a process sees the same fragments.
  """
  import importlib.util
  import sys
  path = os.path.join(os.path.dirname(os.path.realpath(config_file)), name + ".py")
  key = f"mecjax_configs_{name}_{abs(hash(path)):x}"
  if key in sys.modules:
    return sys.modules[key]
  if not os.path.isfile(path):
    raise ConfigError(f"config file {config_file!r} reads {path!r}, which does not exist")
  spec = importlib.util.spec_from_file_location(key, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[key] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[key]
    raise
  return module


CONFIG_FILE = "config.json"


def save(config, workdir: str) -> None:
  """Write ``config`` as JSON into ``workdir`` (read back by ``load_run``)."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def load_run(workdir: str) -> ml_collections.ConfigDict:
  """The config a run directory was trained with: its ``config.json`` over ``base()`` (keys
  added to the schema since keep their defaults); sequences come back as tuples. A run
  saved before ``aug.num_global_views`` existed had one global view per ``aug.blur_prob``
  entry, and gets that number."""
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
  if "num_global_views" not in saved.get("aug", {}) and config.aug.get("blur_prob"):
    config.aug.num_global_views = len(config.aug.blur_prob)
  return config


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
