"""What the offline evaluations (linear probe, fine-tuning) share: the encoder named by
``config.init``, the labelled data, the crop-and-flip training view, and one checkpointed
classifier run (a step function, state, input and the final evaluation handed to
``mecjax.loop.Loop``, the loop pre-training runs too: restore, checkpoints, signals, the
NaN guard and the metrics rows are the same code).

The encoder's architecture and input normalisation follow the run it comes from: with
``init.workdir`` set, ``method``, ``model``, ``projector``, ``predictor`` and
``aug.mean/std`` are read from that run's ``config.json`` (so one probe config serves a run
of any width); with ``init.torch`` (a torchvision-layout checkpoint) ``config.model`` says
what it is; with neither (and ``init.required`` False) the encoder is a fresh random
initialisation of ``config.model``: the random-init baseline.

Resume: the run's checkpoint records which checkpoint step of ``init.workdir`` the encoder
came from, and a rerun reloads that step even if the pre-training run has saved newer ones;
a rerun of a finished run writes nothing and returns its last metrics row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from mecjax import checkpoint as ckpt_lib
from mecjax import configlib
from mecjax import data as data_lib
from mecjax import initialize
from mecjax import loop as loop_lib
from mecjax import methods
from mecjax import models
from mecjax import optim
from mecjax import parallel
from mecjax import workdir as workdir_lib
from mecjax.data import augment
from mecjax.data.sources import DataError
from mecjax.evaluators import common as eval_common
from mecjax.evaluators import metrics as metrics_lib
from mecjax.evaluators import probe

log = logging.getLogger("mecjax")

# The keys of a pre-training run that describe its encoder and what its input looks like.
RUN_KEYS = ("method", "model", "projector", "predictor")


# ------------------------------------------------------------------------ heads


class LinearHead(nn.Module):
  """``[BN(no affine, eps)] -> Linear``: the MEC / MoCo v3 / SimSiam probe head (the BN
  whitens each feature with batch statistics, running ones at eval; PyTorch momentum 0.1).
  The linear layer starts at N(0, 0.01) weights and zero bias, as those probes do.
  ``bn_eps`` None: the linear layer alone (the fine-tuning head)."""
  num_outputs: int
  bn_eps: float | None = 1e-6

  @nn.compact
  def __call__(self, features, train: bool = False):
    x = features.astype(jnp.float32)
    if self.bn_eps is not None:
      x = models.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False,
                           epsilon=self.bn_eps, name="bn")(x)
    return nn.Dense(self.num_outputs, kernel_init=nn.initializers.normal(0.01),
                    bias_init=nn.initializers.zeros, name="linear")(x)


class Classifier(nn.Module):
  """``encoder -> LinearHead(bn_eps=None)``: the network fine-tuning trains whole."""
  encoder: nn.Module
  num_outputs: int

  @nn.compact
  def __call__(self, images, train: bool = False):
    return LinearHead(self.num_outputs, bn_eps=None, name="head")(
        self.encoder(images, train=train), train)


def classification_loss(logits, labels, multi_label: bool):
  """(loss, train accuracy): mean softmax cross-entropy over rows with ``label >= 0``, or
  for multi-hot (B, C) ``labels`` the mean sigmoid cross-entropy over rows and classes
  (accuracy then: the fraction of correct class decisions at logit 0)."""
  if not multi_label:
    return probe.loss_and_accuracy(logits, labels)
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
  return loss, jnp.mean((logits > 0) == (labels > 0.5))


# ------------------------------------------------------------------------ setup


def adopt_run_config(config) -> None:
  """With ``init.workdir`` set: take its encoder, heads and input normalisation (see the
  module docstring); a run directory without config.json stops with one line."""
  if not config.init.workdir:
    return
  if not os.path.isdir(config.init.workdir):
    raise configlib.ConfigError(
        f"config.init.workdir={config.init.workdir!r} does not exist: point it at a mecjax "
        "run directory (a pre-training run's --workdir)")
  run = configlib.load_run(config.init.workdir)
  for key in RUN_KEYS:
    if isinstance(config[key], str):
      config[key] = run[key]
    else:
      for sub in config[key]:
        config[key][sub] = run[key][sub]
  config.aug.mean, config.aug.std = tuple(run.aug.mean), tuple(run.aug.std)


def latest_run_step(run_dir: str) -> int:
  """The newest complete checkpoint step of a run directory (orbax names them by step)."""
  directory = os.path.join(run_dir, "checkpoints")
  steps = [int(d) for d in (os.listdir(directory) if os.path.isdir(directory) else [])
           if d.isdigit()]
  if not steps:
    raise configlib.ConfigError(f"config.init.workdir={run_dir!r} holds no checkpoint")
  return max(steps)


def encoder_source(config) -> dict:
  """Where the encoder comes from, recorded in the checkpoint meta and the feature cache."""
  init = config.init
  if init.workdir:
    step = init.step if init.step is not None else latest_run_step(init.workdir)
    return {"kind": "run", "path": os.path.abspath(init.workdir), "step": int(step)}
  if init.torch:
    return {"kind": "torch", "path": os.path.abspath(init.torch), "step": -1}
  return {"kind": "random", "path": "", "step": -1, "seed": int(config.seed)}


def load_encoder(config, source: dict):
  """(encoder module, host variables ``{'params', 'batch_stats'}``) as ``source`` says."""
  size = config.data.image_size
  method = methods.get_method(config, methods.RunInfo(config.batch_size, 1, 1))
  params, state = method.init(jax.random.key(config.seed), (2, size, size, 3))
  if source["kind"] != "random":
    cfg = config.copy_and_resolve_references()
    if source["kind"] == "run":
      cfg.init.step = source["step"]
    params, state = initialize.initialize(cfg, method, params, state)
  else:
    log.info("no config.init: the encoder is a random initialisation (seed %d)",
             config.seed)
  variables = {"params": params["encoder"], "batch_stats": state["batch_stats"]["encoder"]}
  return models.get_encoder(config.model), jax.device_get(variables)


class MultiLabelTfds:
  """A tfds split whose examples carry a set of labels (VOC2007's ``labels``): the label
  is a multi-hot int32 vector over the data set's classes."""

  def __init__(self, name: str, split: str, data_dir: str | None, max_examples: int | None):
    import tensorflow_datasets as tfds
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=True)
      feature = tfds.builder(name, data_dir=data_dir).info.features["labels"]
    except Exception as e:  # noqa: BLE001 - unknown name/split, failed download: one line
      raise DataError(f"tfds data set {name!r}, split {split!r} could not be read "
                      f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''})"
                      ) from e
    self.classes = list(feature.feature.names)
    n = len(self.source)
    self.keep = np.arange(n) if max_examples is None else \
        np.linspace(0, n, min(max_examples, n), endpoint=False).astype(np.int64)
    self.labels, self.skipped = None, 0

  def __len__(self):
    return len(self.keep)

  def __getitem__(self, i: int) -> dict:
    ex = self.source[int(self.keep[i])]
    hot = np.zeros(len(self.classes), np.int32)
    hot[np.asarray(ex["labels"], np.int64)] = 1
    image = np.asarray(ex["image"])
    if image.ndim == 2 or image.shape[-1] == 1:
      image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    return {"image": image, "label": hot, "index": np.int32(i)}


def load_split(config, split: str, max_examples: int | None):
  """The labelled source of one split (``config.data``; multi-label through tfds)."""
  dcfg = config.data
  if config.linear.multi_label:
    if dcfg.path:
      raise configlib.ConfigError("config.linear.multi_label reads tfds 'labels' sets: "
                                  "unset config.data.path")
    src = MultiLabelTfds(dcfg.name, split, dcfg.data_dir, max_examples)
  else:
    src = data_lib.load_config_split(dcfg, split, max_examples)
  if not len(src.classes):
    raise DataError(f"split {split!r} has no labels: an evaluation needs "
                    "<split>/<class>/<image> (or a labelled tfds split)")
  return src


def train_view(recipe, images, index, step, key) -> jax.Array:
  """One augmented view for supervised training: the recipe's random-resized crop
  (``config.aug.crop_scale``) and horizontal flip, normalised; no colour operations
  (the MEC / MoCo v3 probe's and SimCLR's fine-tuning augmentation)."""
  keys = augment.sample_keys(key, step, index, 1)
  crop = recipe.crops(keys[:, 0], None, images, num_global=1)[0][0]   # global view 1
  return augment.normalize(crop, recipe.cfg.mean, recipe.cfg.std)


to_host = eval_common.to_host   # kept public: the offline evaluations' gather


def map_eval_batches(fn, args, source, config, recipe, mesh):
  """``fn(*args, images)`` over every image of ``source`` (the recipe's eval transform),
  as host arrays ``(outputs, labels)`` with the padding dropped
  (``evaluators.common.map_batches`` with the config's eval batch size)."""
  return eval_common.batch_mapper(config, recipe, mesh)(fn, args, source)


# ------------------------------------------------------------------------ loop


@flax.struct.dataclass
class State:
  """A classifier run's resumable state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


@dataclasses.dataclass
class Classification:
  """What one evaluation protocol gives ``fit``.

  prefix: the metrics' prefix (``linear`` -> ``linear_top1``, ``linear_loss``, ...).
  init: ``init(seed) -> (params, batch_stats)`` of the trainable model (fresh, traceable).
  initial: None, or ``f(params, batch_stats) -> (params, batch_stats)`` on the host that
    merges trained weights in when the run starts (not on resume).
  logits: ``logits(params, batch_stats, frozen, batch, step, key, train) -> (logits,
    batch_stats)`` for a global batch ``{'image' | 'features', 'label', 'index'}``.
  frozen: arrays the step reads but never updates (the probe's encoder), or None.
  make_input: ``make_input(total_steps) -> iterator of global batches`` with
    ``get_state()`` / ``set_state()``.
  train_size: rows of the training split (steps per epoch = train_size // batch).
  evaluate: ``evaluate(state) -> (scores, labels)`` of the eval split on the host.
  meta: what the checkpoint must match on resume (and the encoder's source).
  """
  prefix: str
  init: Callable
  initial: Callable | None
  logits: Callable
  frozen: Any
  make_input: Callable
  train_size: int
  evaluate: Callable
  meta: dict


def saved_meta(workdir: str) -> dict | None:
  """The meta record of a classifier run's newest checkpoint whose meta is readable (a
  damaged one is the restore's business), or None when it has none."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  meta = None
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      break
    except Exception:  # noqa: BLE001 - unreadable: Checkpointer.restore_newest says so
      continue
  manager.close()
  return meta


def fit(config, workdir: str, task: Classification) -> dict:
  """Train ``task``'s classifier with ``config.optim`` for ``config.total_*``, log every
  ``log_every_steps``, checkpoint every ``checkpoint.every_*`` and at the end, evaluate at
  the end (rows ``{prefix}_top1``, ``_top5``, and ``config.linear.metric``'s); returns the
  last metrics row. A finished run is not trained or evaluated again."""
  prefix, multi_label = task.prefix, config.linear.multi_label
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  global_batch = config.batch_size
  parallel.check_batch(global_batch, "config.batch_size")
  parallel.check_batch(config.eval_batch_size, "config.eval_batch_size")
  steps_per_epoch = task.train_size // global_batch
  if steps_per_epoch == 0:
    raise DataError(f"the training split has {task.train_size} images, fewer than one "
                    f"global batch of {global_batch} (config.batch_size)")
  total_steps = configlib.duration(config, "total", steps_per_epoch)
  if not total_steps:
    raise configlib.ConfigError("set config.total_epochs or config.total_steps")
  log_every = config.log_every_steps
  ckpt_every = configlib.duration(config.checkpoint, "every", steps_per_epoch,
                                  steps_per_epoch)
  run_info = methods.RunInfo(global_batch, steps_per_epoch, total_steps)
  tx, lr, _ = optim.make_tx(config, run_info, uses_target=False)

  def init_state(seed):
    key = jax.random.key(seed)
    params, batch_stats = task.init(key)
    return State(step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
                 opt_state=tx.init(params), rng=jax.random.key_data(key))

  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                          jax.eval_shape(init_state, config.seed))
  meta = dict(task.meta, param_shapes=ckpt_lib.fingerprint(config, abstract.params)[
      "param_shapes"])

  def init():
    state = jax.jit(init_state, static_argnums=0, out_shardings=repl)(config.seed)
    if task.initial is not None:
      params, batch_stats = jax.device_put(
          task.initial(*jax.device_get((state.params, state.batch_stats))), repl)
      state = state.replace(params=params, batch_stats=batch_stats,
                            opt_state=jax.jit(tx.init, out_shardings=repl)(params))
    return state

  frozen = None if task.frozen is None else jax.device_put(task.frozen, repl)

  def train_step(state: State, frozen, batch):
    key = jax.random.wrap_key_data(state.rng)

    def loss_fn(params):
      logits, batch_stats = task.logits(params, state.batch_stats, frozen, batch,
                                        state.step, key, True)
      loss, acc = classification_loss(logits, batch["label"], multi_label)
      return loss, (acc, batch_stats)

    (loss, (acc, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {f"{prefix}_loss": loss, f"{prefix}_train_top1": acc, "lr": lr(state.step),
               "grad_norm": optax.global_norm(grads)}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics

  p_step = jax.jit(train_step, in_shardings=(repl, repl, parallel.batch_sharding(mesh)),
                   out_shardings=(repl, repl), donate_argnums=(0,))
  # Evaluated at the last step only, before the final checkpoint (the loop's order): a run
  # whose last checkpoint exists has its result in metrics.jsonl, so a rerun does nothing.
  final = ClassificationEval(task.evaluate, prefix, config.linear.metric, multi_label,
                             config.data.eval_split)
  return loop_lib.Loop(
      workdir=workdir, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      global_batch=global_batch, abstract=abstract, meta=meta, init=init,
      make_input=task.make_input, train_step=lambda state, batch: p_step(state, frozen, batch),
      mesh=mesh, log_every=log_every, checkpoint_every=ckpt_every,
      keep=config.checkpoint.keep, stop_check_every=config.checkpoint.stop_check_every_steps,
      evaluations=[(prefix, final, None)], name=prefix, loss_key=f"{prefix}_loss",
      schedule_keys=("lr",), eval_seconds_key=f"{prefix}_eval_seconds",
      train_seconds_key=f"{prefix}_train_seconds", throughput_in_row=False,
      log_keys={f"{prefix}_train_top1": "train top-1"}).run()


class ClassificationEval:
  """The evaluator of a classifier run: ``evaluate(state) -> (scores, labels)`` on the
  host, scored by ``metrics.classification_metrics`` (``{prefix}_top1``, ``_top5``, and
  ``metric``'s)."""

  def __init__(self, evaluate: Callable, prefix: str, metric: str, multi_label: bool,
               split: str = ""):
    self.evaluate, self.prefix, self.metric = evaluate, prefix, metric
    self.multi_label, self.split = multi_label, split

  def run(self, state):
    scores, labels = self.evaluate(state)
    row = metrics_lib.classification_metrics(scores, labels, self.prefix, self.metric,
                                             self.multi_label)
    log.info("%s evaluation on %d %r images: %s", self.prefix, len(labels), self.split,
             ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    yield from row.items()


# ------------------------------------------------------------------------ entry


def prepare(config, workdir: str, task: str) -> tuple[str, dict]:
  """Common start of ``linear.run`` / ``finetune.run``: check the task, adopt the init
  run's encoder config, save the config, resolve the encoder's source (pinned to the one
  a checkpoint in ``workdir`` recorded). Returns (absolute workdir, source)."""
  if config.task != task:
    raise configlib.ConfigError(f"config.task={config.task!r}: this entry point runs "
                                f"{task!r}")
  configlib.validate(config)
  initialize.requested(config)
  adopt_run_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.lock(workdir)   # another live run on this workdir stops us here
  if parallel.is_main_process():
    configlib.save(config, workdir)
  meta = saved_meta(workdir)
  source = meta["encoder"] if meta and "encoder" in meta else encoder_source(config)
  if meta and source != encoder_source(config) and source["kind"] == "run":
    log.info("resuming with the encoder this run started from: %s step %d",
             source["path"], source["step"])
  return workdir, source


def base_meta(config, task: str, source: dict, num_outputs: int) -> dict:
  return {"method": task, "task": task, "encoder": source,
          "model": config.model.to_dict(), "num_outputs": int(num_outputs),
          "data": json.loads(json.dumps({"name": config.data.name, "path": config.data.path,
                                         "train_split": config.data.train_split}))}
