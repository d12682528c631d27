"""The one train / evaluate loop, for every method, encoder and data set.

``run(config, workdir)`` is all of it; ``mecjax.main`` is only its command line, so notebooks
call ``run`` directly. Sections: setup, data, state, restore, train step, evaluate, loop.
Nothing here knows a particular method or data set: they are chosen by name from config.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mecjax import checkpoint as ckpt_lib
from mecjax import configlib
from mecjax import data as data_lib
from mecjax import evaluators
from mecjax import initialize
from mecjax import methods
from mecjax import metric_writers
from mecjax import models
from mecjax import monitors
from mecjax import optim
from mecjax import parallel
from mecjax import preemption
from mecjax import workdir as workdir_lib
from mecjax.data import sources

log = logging.getLogger("mecjax")


NonFiniteError = monitors.NonFiniteError   # public names kept: the loop's error and optimiser
make_tx = optim.make_tx


@flax.struct.dataclass
class TrainState:
  """Everything a resume needs, saved and restored whole."""
  step: jax.Array
  params: Any
  model_state: Any        # the method's non-trainable state (BN statistics, ...)
  opt_state: Any          # optax state, holding the EMA target when the method has one
  probe_params: Any
  probe_opt_state: Any
  rng: jax.Array          # raw key data of jax.random.key(seed)


def check_names(config) -> None:
  """Every by-name choice exists, before any data is read or compiled."""
  choices = {"method": methods.METHODS, "model.name": models.ENCODERS,
             "model.dtype": models.DTYPES, "aug.name": data_lib.RECIPES,
             "optim.name": ("sgd", "lars", "adamw")}
  for key, known in choices.items():
    value = config
    for part in key.split("."):
      value = value[part]
    if value not in known:
      raise configlib.ConfigError(f"config.{key}={value!r}: expected one of {sorted(known)}")


def run(config, workdir: str) -> dict:
  """Train (or resume) the run in ``workdir``; returns the last logged metrics."""
  # ------------------------------------------------------------------ setup
  check_names(config)
  if config.task != "pretrain":   # linear / finetune: mecjax.tasks.run_task dispatches them
    raise configlib.ConfigError(f"config.task={config.task!r}: train.run pre-trains; run "
                                "this config with python -m mecjax.main")
  configlib.validate(config)
  init_from = initialize.requested(config)
  workdir = os.path.abspath(workdir)
  is_main = parallel.is_main_process()
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.lock(workdir)   # before anything is written: another live run stops us here
  if is_main:   # what the evaluation commands read back (mecjax.evaluate)
    configlib.save(config, workdir)
  mesh = parallel.make_mesh()
  global_batch = config.batch_size
  parallel.check_batch(global_batch, "config.batch_size")
  parallel.check_batch(config.eval_batch_size, "config.eval_batch_size")
  repl = parallel.replicated(mesh)
  log.info("%d process(es), %d device(s) (%s); global batch %d", jax.process_count(),
           jax.device_count(), jax.devices()[0].platform, global_batch)

  # ------------------------------------------------------------------- data
  dcfg = config.data
  size = dcfg.image_size
  in_memory = dcfg.in_memory if dcfg.in_memory is not None else size <= 64
  # Small data sets may be kept at a larger side than the network sees (a CPU run at 16x16
  # still crops from the 32x32 originals); the device resizes eval images to image_size.
  stored = (dcfg.stored_size or size) if in_memory else size
  recipe = data_lib.get_recipe(config.aug, size, config.seed)
  log.info("views per image: %d x %d px%s", recipe.num_global, size,
           f" + {recipe.num_local} x {recipe.local_size} px (local)" if recipe.num_local else "")
  t0 = time.time()
  train_src = data_lib.load_split(dcfg, dcfg.train_split, dcfg.max_train_examples, in_memory,
                                  stored)
  num_classes = len(train_src.classes)
  log.info("train split %r: %d images, %d classes (%.1fs)%s", dcfg.train_split,
           len(train_src), num_classes, time.time() - t0,
           f"; skipped {train_src.skipped} unreadable" if train_src.skipped else "")
  steps_per_epoch = len(train_src) // global_batch
  if steps_per_epoch == 0:
    raise data_lib.DataError(
        f"the training split has {len(train_src)} images, fewer than one global batch of "
        f"{global_batch} (config.batch_size)")
  total_steps = configlib.duration(config, "total", steps_per_epoch)
  if not total_steps:
    raise configlib.ConfigError("set config.total_epochs or config.total_steps")
  labelled = num_classes > 0
  knn_on = config.knn.enabled and labelled
  probe_on = config.probe.enabled and labelled
  if knn_on or probe_on:
    query_src = data_lib.load_split(dcfg, dcfg.eval_split, dcfg.max_eval_examples,
                                    in_memory, stored)
    bank_src = sources.subset(train_src, config.knn.max_train_examples)
  every = lambda cfg, name, default: configlib.duration(cfg, name, steps_per_epoch, default)
  log_every = config.log_every_steps
  eval_every = every(config.knn, "every", total_steps)
  ckpt_every = every(config.checkpoint, "every", steps_per_epoch)

  # ------------------------------------------------------------------ state
  run_info = methods.RunInfo(global_batch, steps_per_epoch, total_steps)
  method = methods.get_method(config, run_info)
  tx, lr, ema_momentum = make_tx(config, run_info, method.uses_target, method.frozen_mask())
  probe_tx = evaluators.probe.make_optimizer(config.probe)
  probe_net = evaluators.probe.LinearProbe(max(num_classes, 1))
  view_shape = (2, size, size, 3)

  init_state = make_init(method, tx, probe_net, probe_tx, view_shape)

  abstract = jax.eval_shape(init_state, config.seed)
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                          abstract)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  log.info("method %s, encoder %s (width %s): %.2fM parameters", config.method,
           config.model.name, config.model.width, n_params / 1e6)
  meta = ckpt_lib.fingerprint(config, abstract.params)

  # ---------------------------------------------------------------- restore
  checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint.keep)
  # The newest checkpoint that restores; damaged newer ones are moved aside.
  latest, state, data_state = checkpointer.restore_newest(abstract, meta)
  if latest is not None:
    log.info("resumed from %s/%d", checkpointer.directory, latest)
  else:
    state = jax.jit(init_state, static_argnums=0, out_shardings=repl)(config.seed)
    if init_from:   # continued pre-training: trained weights, fresh optimiser
      params, model_state = jax.device_put(
          initialize.initialize(config, method, state.params, state.model_state), repl)
      state = state.replace(params=params, model_state=model_state,
                            opt_state=jax.jit(tx.init, out_shardings=repl)(params))
  start_step = int(jax.device_get(state.step))
  writer = metric_writers.MetricWriter(workdir, enabled=is_main)
  if start_step >= total_steps:
    log.info("run already complete at step %d", start_step)
    checkpointer.close()
    writer.close()
    workdir_lib.release(workdir)
    return _last_metrics(workdir) if is_main else {}

  train_input = data_lib.TrainInput(
      train_src, global_batch=global_batch, seed=config.seed, mesh=mesh,
      total_steps=total_steps, host_transform=recipe.host_transform(),
      threads=dcfg.host_threads, prefetch=dcfg.prefetch_batches, workers=dcfg.host_workers)
  if data_state is not None:
    train_input.set_state(data_state)

  # ------------------------------------------------------------- train step
  # Logged as the interval's last value (a schedule), the others as the interval's mean.
  schedule_keys = ("lr", "ema_momentum") + tuple(method.schedule_metrics)

  update = make_update(method, tx, lr, ema_momentum, probe_net, probe_tx, probe_on)
  p_train_step = make_train_step(recipe, update, mesh)

  # --------------------------------------------------------------- evaluate
  evaluate = Evaluator(config, method, recipe, mesh, bank_src if knn_on else None,
                       query_src if (knn_on or probe_on) else None, num_classes,
                       probe_net if probe_on else None)

  all_finite = jax.jit(lambda tree: jnp.all(jnp.asarray(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])))

  # ------------------------------------------------------------------- loop
  pending: list[tuple[int, dict]] = []   # device metrics not yet fetched
  last_row: dict = {}
  last_saved = latest
  timer = {"t": time.time(), "steps": 0}

  def flush() -> None:
    """Fetch pending metrics, stop on a non-finite loss, write the interval's row."""
    nonlocal last_row
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    steps = [s for s, _ in pending]
    for s, m in zip(steps, fetched):
      if not np.isfinite(m["loss"]):
        raise NonFiniteError(
            f"non-finite loss ({m['loss']}) at step {s}, in steps {steps[0]}..{steps[-1]}; "
            f"last checkpoint: step {last_saved} (kept intact, nothing saved after it)")
    row = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
    row.update({k: float(fetched[-1][k]) for k in schedule_keys if k in fetched[-1]})
    elapsed = time.time() - timer["t"]
    if timer["steps"]:
      rate = timer["steps"] / max(elapsed, 1e-9)
      row["examples_per_sec"] = rate * global_batch
      eta = (total_steps - steps[-1]) / rate
      log.info("step %d/%d (epoch %.2f) | loss %.4f | %.0f img/s | ETA %s", steps[-1],
               total_steps, steps[-1] / steps_per_epoch, row["loss"], rate * global_batch,
               _hms(eta))
    row["epoch"] = steps[-1] / steps_per_epoch
    writer.write(steps[-1], row)
    last_row = {"step": steps[-1], **row}
    pending.clear()
    timer.update(t=time.time(), steps=0)

  def save(step: int) -> None:
    nonlocal last_saved
    flush()
    if not bool(all_finite(state.params)):
      raise NonFiniteError(f"non-finite parameters at step {step} (loss still finite); last "
                           f"checkpoint: step {last_saved} (kept intact)")
    checkpointer.save(step, state, train_input.get_state(), meta)
    last_saved = step

  log.info("training steps %d..%d of %d (%d per epoch); logging every %d, eval every %d, "
           "checkpoint every %d", start_step, total_steps, total_steps, steps_per_epoch,
           log_every, eval_every, ckpt_every)
  # SIGTERM / SIGINT / SIGUSR1: finish the step, save it, flush, raise Preempted.
  stop = preemption.StopSignals()
  agreed_stop = preemption.StopAgreement(stop, mesh, config.checkpoint.stop_check_every_steps)
  try:
    stop.install()
    for step in range(start_step + 1, total_steps + 1):
      batch = next(train_input)
      state, metrics = p_train_step(state, batch)
      pending.append((step, metrics))
      timer["steps"] += 1
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        log.info("first step (compilation included) took %.1fs", time.time() - timer["t"])
        timer.update(t=time.time(), steps=0)
      if step % log_every == 0 or step == total_steps:
        flush()
      if (knn_on or probe_on) and (step % eval_every == 0 or step == total_steps):
        flush()
        row = evaluate(state)
        writer.write(step, row)
        last_row.update(row)
        timer.update(t=time.time(), steps=0)
      if step % ckpt_every == 0 or step == total_steps:
        save(step)
        timer["t"] = time.time()
      signum = agreed_stop(step)
      if signum is not None and step < total_steps:
        if last_saved != step:
          save(step)
        checkpointer.wait()   # the checkpoint is complete before the process ends
        raise preemption.Preempted(signum, step, checkpointer.directory)
    flush()
  finally:
    stop.restore()
    checkpointer.close()
    writer.close()
    workdir_lib.release(workdir)
  return last_row


class Evaluator:
  """The kNN monitor and the online probe's accuracy, on eval-mode backbone features.

  ``Evaluator(...)(state) -> {'knn_top1', 'probe_top1', 'eval_seconds'}``: features of the
  un-augmented bank (train split) and query (eval split) sources, weighted kNN
  (``config.knn``) and the probe's top-1 on the queries. ``bank`` None skips kNN, ``probe``
  None skips the probe.
  """

  def __init__(self, config, method, recipe, mesh, bank, queries, num_classes: int,
               probe: nn.Module | None, bn_mode: str = "eval"):
    self.config, self.recipe, self.mesh = config, recipe, mesh
    self.bank, self.queries, self.num_classes, self.probe = bank, queries, num_classes, probe
    self.bn_mode = bn_mode   # "eval": running statistics; "batch": each eval batch's own
    self.encode = jax.jit(lambda params, ms, images: method.encode(
        params, ms, recipe.eval_view(images), train=bn_mode == "batch"))
    self.probe_logits = jax.jit(lambda p, f: probe.apply({"params": p}, f)) if probe else None

  def features(self, params, model_state, source):
    """(features, labels, valid) of every image of ``source``, as global arrays."""
    feats, labels, valid = [], [], []
    for batch in data_lib.eval_batches(source, global_batch=self.config.eval_batch_size,
                                       mesh=self.mesh, transform=self.recipe.eval_transform(),
                                       threads=self.config.data.host_threads):
      feats.append(self.encode(params, model_state, batch["image"]))
      labels.append(batch["label"])
      valid.append(batch["valid"])
    return jnp.concatenate(feats), jnp.concatenate(labels), jnp.concatenate(valid)

  def knn(self, bank_features, queries) -> float:
    cfg = self.config.knn
    return float(evaluators.knn_top1(*bank_features, *queries, num_classes=self.num_classes,
                                     k=cfg.k, temperature=cfg.temperature))

  def __call__(self, state) -> dict:
    t = time.time()
    out = {}
    if self.queries is None:
      return out
    queries = self.features(state.params, state.model_state, self.queries)
    if self.bank is not None:
      out["knn_top1"] = self.knn(self.features(state.params, state.model_state, self.bank),
                                 queries)
    if self.probe is not None:
      q_feat, q_label, q_valid = queries
      logits = self.probe_logits(state.probe_params, q_feat)
      correct = (jnp.argmax(logits, -1) == q_label) & q_valid
      out["probe_top1"] = float(jnp.sum(correct) / jnp.maximum(jnp.sum(q_valid), 1))
    out["eval_seconds"] = time.time() - t
    log.info("eval at step %d (BN in %s mode, k=%d, T=%g): %s", int(state.step),
             self.bn_mode, self.config.knn.k, self.config.knn.temperature,
             ", ".join(f"{k} {v:.4f}" for k, v in out.items()))
    return out


def make_init(method, tx, probe_net, probe_tx, view_shape):
  """``init_state(seed) -> TrainState`` for views of ``view_shape`` (B, H, W, C)."""

  def init_state(seed):
    key = jax.random.key(seed)
    k_model, k_probe = jax.random.split(key)
    params, model_state = method.init(k_model, view_shape)
    params = method.project_params(params)
    feat = jax.eval_shape(method.encode, params, model_state, jnp.zeros(view_shape))
    probe_params = probe_net.init(k_probe, jnp.zeros(feat.shape, jnp.float32))["params"]
    return TrainState(step=jnp.zeros([], jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), probe_params=probe_params,
                      probe_opt_state=probe_tx.init(probe_params),
                      rng=jax.random.key_data(key))
  return init_state


def make_update(method, tx, lr, ema_momentum, probe_net, probe_tx, probe_on: bool):
  """``update(state, views, labels) -> (state, metrics)``: one optimisation step on
  augmented views (the train step minus augmentation; benchmarks time it alone)."""

  def update(state: TrainState, views, labels):
    step = state.step
    target = methods.teacher.params(state)

    def loss_fn(params):
      return method.loss(params, state.model_state, target, views, step)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = method.project_params(optax.apply_updates(state.params, updates))

    metrics = {"loss": loss, "lr": lr(step), "grad_norm": optax.global_norm(grads),
               **aux.metrics, **monitors.collapse_metrics(aux.embeddings[0])}
    if ema_momentum is not None:
      metrics["ema_momentum"] = ema_momentum(step)
    probe_params, probe_opt_state = state.probe_params, state.probe_opt_state
    if probe_on:
      features = jnp.concatenate(aux.features)
      all_labels = jnp.tile(labels, len(aux.features))

      def probe_loss(p):
        return evaluators.probe.loss_and_accuracy(probe_net.apply({"params": p}, features),
                                                  all_labels)

      (p_loss, p_acc), p_grads = jax.value_and_grad(probe_loss, has_aux=True)(probe_params)
      p_updates, probe_opt_state = probe_tx.update(p_grads, probe_opt_state, probe_params)
      probe_params = optax.apply_updates(probe_params, p_updates)
      metrics.update(probe_loss=p_loss, probe_train_top1=p_acc)
    return state.replace(step=step + 1, params=params, model_state=aux.state,
                         opt_state=opt_state, probe_params=probe_params,
                         probe_opt_state=probe_opt_state), metrics
  return update


def make_train_step(recipe, update, mesh):
  """The loop's jitted ``train_step(state, batch) -> (state, metrics)``: on-device
  augmentation (``recipe.views``) then ``update`` (``make_update``); state replicated and
  donated, the batch sharded over ``mesh``. Tests lower it for accelerators."""
  repl = parallel.replicated(mesh)

  def train_step(state: TrainState, batch):
    key = jax.random.wrap_key_data(state.rng)
    views = recipe.views(batch["image"], batch["index"], state.step, key)
    return update(state, views, batch["label"])

  return jax.jit(train_step, in_shardings=(repl, parallel.batch_sharding(mesh)),
                 out_shardings=(repl, repl), donate_argnums=(0,))


def _last_metrics(workdir: str) -> dict:
  rows = metric_writers.read_metrics(workdir)
  return rows[-1] if rows else {}


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"
