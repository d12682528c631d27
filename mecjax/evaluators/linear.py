r"""Offline linear probe of a frozen encoder (``config.task = "linear"``):

  python -m mecjax.main --config=configs/linear_cifar10.py --workdir=DIR \
      --config.init.workdir=RUN [--config.data.path=...]

The MEC protocol (official ``main_lincls``, from MoCo v3 / SimSiam): the online encoder of
``config.init`` frozen, BN in eval mode (running statistics); on its pooled features
``BN(no affine, eps 1e-6) -> Linear`` (``downstream.LinearHead``), softmax cross-entropy
(sigmoid for multi-label data), ``config.optim`` (SGD or LARS, warm-up + cosine),
``config.batch_size`` / ``config.total_epochs``. Logs ``linear_loss``, ``linear_train_top1``
while training and ``linear_top1``, ``linear_top5`` (and ``config.linear.metric``'s figure)
on ``data.eval_split`` at the end, into DIR's metrics.jsonl and TensorBoard.

Two ways to feed the head:
- augmented (``linear.cache_features`` False, the ImageNet recipe): each step draws a
  random-resized crop + flip of the training images (``downstream.train_view``) and runs
  the frozen encoder on it; eval images go through the recipe's eval transform (ImageNet:
  resize 256, centre crop 224; CIFAR: the image as is).
- cached (``linear.cache_features`` True, CIFAR and the transfer probes): the frozen
  encoder sees each train and eval image once, un-augmented; the features are written to
  ``DIR/features/<split>.npz`` with a key naming the encoder checkpoint and the data, and
  reused by any rerun with the same key. The head then trains on them for many epochs in
  seconds. Without augmentation the probe sees less variety, so its figure can differ from
  the augmented protocol's by a point or so; the config says which protocol it ran.

The encoder is not in the trainable state at all (it is an argument of the step, never
differentiated or updated), so a probe cannot change it.

During pre-training, type ``linear`` of ``config.evals`` (``MidRunProbe``, ``build``) fits
a linear probe on un-augmented features at the entry's cadence (off by default).
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np
import optax

from mecjax import configlib
from mecjax import data as data_lib
from mecjax import parallel
from mecjax.data import sources
from mecjax.evaluators import common
from mecjax.evaluators import downstream
from mecjax.evaluators import metrics as metrics_lib

log = logging.getLogger("mecjax")

PREFIX = "linear"


def feature_key(config, source: dict, split: str, max_examples: int | None) -> dict:
  """What cached features depend on: the encoder checkpoint and every input setting."""
  d, a = config.data, config.aug
  return {"encoder": source, "model": config.model.to_dict(), "data_name": d.name,
          "data_path": os.path.abspath(d.path) if d.path else None, "split": split,
          "max_examples": max_examples, "image_size": d.image_size,
          "stored_size": d.stored_size, "aug": a.name, "mean": list(a.mean),
          "std": list(a.std), "multi_label": bool(config.linear.multi_label)}


def encode_source(encoder, variables, source, config, recipe, mesh):
  """(features, labels) of every image of ``source``: un-augmented, eval-mode BN."""
  encode = jax.jit(lambda v, images: encoder.apply(v, recipe.eval_view(images), train=False))
  return downstream.map_eval_batches(encode, (variables,), source, config, recipe, mesh)


def cached_features(workdir, config, source, split, max_examples, load_split, encoder,
                    variables, recipe, mesh):
  """(features, labels, number of classes) of ``split``, from
  ``DIR/features/<split>.npz`` when its key matches, else computed (``encode_source``) and
  written there."""
  key = json.dumps(feature_key(config, source, split, max_examples), sort_keys=True)
  path = os.path.join(workdir, "features", f"{split.replace('/', '_')}.npz")
  if os.path.isfile(path):
    with np.load(path) as f:
      if str(f["key"]) == key:
        log.info("features of %r: reusing %s (%d x %d)", split, path, *f["features"].shape)
        return f["features"], f["labels"], int(f["num_classes"])
    log.info("features of %r: %s was computed for another encoder or data; recomputing",
             split, path)
  t = time.time()
  src = load_split(split, max_examples)
  feats, labels = encode_source(encoder, variables, src, config, recipe, mesh)
  log.info("features of %r: %d x %d in %.1fs", split, *feats.shape, time.time() - t)
  if parallel.is_main_process():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
      np.savez(f, features=feats, labels=labels, num_classes=len(src.classes),
               key=np.asarray(key))
    os.replace(path + ".tmp", path)
  return feats, labels, len(src.classes)


class FeatureInput:
  """Global batches ``{'features', 'label', 'index'}`` of cached features: a seeded
  permutation per epoch, the last partial batch dropped (as ``TrainInput``); its state is
  the number of batches read."""

  def __init__(self, features, labels, *, global_batch: int, seed: int, mesh):
    self.features, self.labels = features, labels
    self.global_batch, self.seed, self.mesh = global_batch, seed, mesh
    self.steps_per_epoch = len(features) // global_batch
    self.first, self.rows = parallel.process_rows(global_batch, mesh)
    self.step, self._epoch, self._order = 0, -1, None

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    epoch, i = divmod(self.step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._epoch = epoch
      self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.features))
    rows = self._order[i * self.global_batch:(i + 1) * self.global_batch]
    rows = rows[self.first:self.first + self.rows]
    self.step += 1
    local = {"features": self.features[rows], "label": self.labels[rows],
             "index": rows.astype(np.int32)}
    return parallel.to_global(local, self.mesh, self.global_batch)

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state["step"])


def run(config, workdir: str) -> dict:
  """Train (or resume) the linear probe in ``workdir``; returns the last metrics row."""
  workdir, source = downstream.prepare(config, workdir, "linear")
  mesh = parallel.make_mesh()
  dcfg = config.data
  recipe = data_lib.get_recipe(config.aug, dcfg.image_size, config.seed)
  encoder, variables = downstream.load_encoder(config, source)
  load_split = lambda split, n: downstream.load_split(config, split, n)

  meta = downstream.base_meta(config, "linear", source, 0)
  meta["cache_features"] = bool(config.linear.cache_features)
  if config.linear.cache_features:
    get = lambda split, n: cached_features(workdir, config, source, split, n, load_split,
                                           encoder, variables, recipe, mesh)
    train_x, train_y, num_outputs = get(dcfg.train_split, dcfg.max_train_examples)
    eval_x, eval_y, _ = get(dcfg.eval_split, dcfg.max_eval_examples)
    return feature_probe(config, workdir, (train_x, train_y), (eval_x, eval_y), num_outputs,
                         dict(meta, num_outputs=num_outputs))
  # Augmented: a crop + flip of each image through the frozen encoder at every step.
  train_src = load_split(dcfg.train_split, dcfg.max_train_examples)
  eval_src = load_split(dcfg.eval_split, dcfg.max_eval_examples)
  num_outputs = len(train_src.classes)
  head = downstream.LinearHead(num_outputs, config.linear.bn_eps)
  size = dcfg.image_size
  feature_shape = jax.eval_shape(
      lambda v: encoder.apply(v, np.zeros((2, size, size, 3), np.float32), train=False),
      variables).shape
  frozen, train_size = variables, len(train_src)
  make_input = lambda total: data_lib.TrainInput(
      train_src, global_batch=config.batch_size, seed=config.seed, mesh=mesh,
      total_steps=total, host_transform=recipe.host_transform(),
      threads=dcfg.host_threads, prefetch=dcfg.prefetch_batches, workers=dcfg.host_workers)

  def logits(params, batch_stats, frozen, batch, step, key, train):
    views = downstream.train_view(recipe, batch["image"], batch["index"], step, key)
    features = jax.lax.stop_gradient(encoder.apply(frozen, views, train=False))
    return _apply_head(head, params, batch_stats, features, train)

  def predict(frozen, params, batch_stats, images):
    features = encoder.apply(frozen, recipe.eval_view(images), train=False)
    return head.apply({"params": params, "batch_stats": batch_stats}, features)
  predict = jax.jit(predict)

  def evaluate(state):
    return downstream.map_eval_batches(predict, (frozen, state.params, state.batch_stats),
                                       eval_src, config, recipe, mesh)

  def init(key):
    variables = head.init(key, np.zeros(feature_shape, np.float32), train=False)
    return variables["params"], variables.get("batch_stats", {})

  meta["num_outputs"] = num_outputs
  return downstream.fit(config, workdir, downstream.Classification(
      prefix=PREFIX, init=init, initial=None, logits=logits, frozen=frozen,
      make_input=make_input, train_size=train_size, evaluate=evaluate, meta=meta))


def _apply_head(head, params, batch_stats, features, train):
  variables = {"params": params, "batch_stats": batch_stats}
  if not train:
    return head.apply(variables, features, train=False), batch_stats
  out, mutated = head.apply(variables, features, train=True, mutable=["batch_stats"])
  return out, mutated["batch_stats"]


def feature_probe(config, workdir: str, train, evaluation, num_outputs: int,
                  meta: dict) -> dict:
  """The probe on given features: ``train`` and ``evaluation`` are host arrays
  ``(features (N, F), labels)``; the head trains on ``train`` in global batches
  (``FeatureInput``) and is scored on ``evaluation``. ``meta`` names what the features are
  (checked on resume). Also the entry point of a probe on other features (the pixel
  baseline of benchmarks/bench_eval.py)."""
  mesh = parallel.make_mesh()
  train_x, train_y = train
  eval_x, eval_y = evaluation
  head = downstream.LinearHead(num_outputs, config.linear.bn_eps)

  def logits(params, batch_stats, frozen, batch, step, key, train):
    return _apply_head(head, params, batch_stats, batch["features"], train)

  predict = jax.jit(lambda p, bs, x: head.apply({"params": p, "batch_stats": bs}, x))

  def evaluate(state):
    chunk = max(config.eval_batch_size, 1)
    scores = np.concatenate([downstream.to_host(predict(
        state.params, state.batch_stats, eval_x[i:i + chunk]))
        for i in range(0, len(eval_x), chunk)])
    return scores, eval_y

  def init(key):
    variables = head.init(key, np.zeros((2, train_x.shape[1]), np.float32), train=False)
    return variables["params"], variables["batch_stats"]

  make_input = lambda total: FeatureInput(train_x, train_y, global_batch=config.batch_size,
                                          seed=config.seed, mesh=mesh)
  return downstream.fit(config, workdir, downstream.Classification(
      prefix=PREFIX, init=init, initial=None, logits=logits, frozen=None,
      make_input=make_input, train_size=len(train_x), evaluate=evaluate, meta=meta))


# ------------------------------------------------------------ during pre-training


def fit_softmax(x: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int,
                lr: float, batch_size: int, seed: int):
  """A linear softmax classifier on standardised features, by SGD (momentum 0.9, cosine
  from ``lr`` to 0, no weight decay), ``epochs`` passes in seeded random batches.

  Minimises ``mean_i CE(softmax(W x_i + b), y_i)`` from ``W ~ N(0, 0.01)``, ``b = 0``.

  Args:
    x: (N, F) float features (already standardised); labels: (N,) ints in [0, C).
  Returns:
    ``(W (F, C), b (C,))`` as host arrays.
  """
  n = len(x)
  batch = min(batch_size, n)
  per_epoch = n // batch
  rng = np.random.default_rng(seed)
  order = np.stack([rng.permutation(n)[:per_epoch * batch].reshape(per_epoch, batch)
                    for _ in range(epochs)]).reshape(-1, batch)
  tx = optax.sgd(optax.cosine_decay_schedule(lr, len(order)), momentum=0.9)

  @jax.jit
  def train(x, labels, order, key):
    params = {"w": 0.01 * jax.random.normal(key, (x.shape[1], num_classes)),
              "b": jax.numpy.zeros((num_classes,))}

    def step(carry, rows):
      params, opt_state = carry
      loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          x[rows] @ p["w"] + p["b"], labels[rows]).mean()
      updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), order)
    return params

  params = train(np.asarray(x, np.float32), np.asarray(labels, np.int32), order,
                 jax.random.key(seed))
  return np.asarray(params["w"]), np.asarray(params["b"])


class MidRunProbe:
  """The linear probe as an evaluator of pre-training (type ``linear`` of
  ``config.evals``): on un-augmented features of the training split (``train``) and the
  eval split (``queries``), standardised with the training split's mean and std (what the
  offline probe's BN without affine does at eval), ``fit_softmax``; yields
  ``linear_top1`` and ``linear_top5`` of the eval split. Cheaper than the offline task
  (no augmentation, a few epochs), so a curve over the run rather than the final figure.

  Args:
    features: ``features(state, source) -> (features (N, F), labels (N,))`` on the host.
    train, queries: labelled sources; num_classes: C; epochs, lr, batch_size, seed: of
      ``fit_softmax``.
  """

  def __init__(self, features, train, queries, *, num_classes: int, epochs: int, lr: float,
               batch_size: int, seed: int):
    self.features, self.train, self.queries = features, train, queries
    self.num_classes, self.epochs, self.lr = num_classes, epochs, lr
    self.batch_size, self.seed = batch_size, seed

  def run(self, state):
    x, y = self.features(state, self.train)
    qx, qy = self.features(state, self.queries)
    x, qx = np.asarray(x, np.float32), np.asarray(qx, np.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    w, b = fit_softmax((x - mean) / std, y, self.num_classes, epochs=self.epochs,
                       lr=self.lr, batch_size=self.batch_size, seed=self.seed)
    yield from metrics_lib.classification_metrics(((qx - mean) / std) @ w + b, qy,
                                                  PREFIX).items()


def build(name: str, cfg, context):
  """The ``linear`` evaluator of ``config.evals.<name>`` (epochs, lr, batch_size; the
  training split capped at ``max_train_examples``, unset: ``config.knn``'s bank size);
  none for unlabelled data."""
  if not context.num_classes:
    return None
  if cfg.epochs <= 0 or cfg.lr <= 0 or cfg.batch_size <= 0:
    raise configlib.ConfigError(f"config.evals.{name}: epochs={cfg.epochs}, lr={cfg.lr}, "
                                f"batch_size={cfg.batch_size}: expected all > 0")
  train = sources.subset(context.train,
                         common.setting(cfg, context.config.knn, "max_train_examples"))
  return MidRunProbe(context.features, train, context.eval, num_classes=context.num_classes,
                     epochs=int(cfg.epochs), lr=float(cfg.lr), batch_size=int(cfg.batch_size),
                     seed=int(context.config.seed))
