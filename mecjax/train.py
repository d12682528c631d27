"""Pre-training, for every method, encoder and data set: assembled here, run by the loop.

``run(config, workdir)`` is all of it; ``mecjax.main`` is only its command line, so notebooks
call ``run`` directly. Sections: setup, data, state, train step, evaluate, then
``mecjax.loop.Loop`` (restore, steps, metrics, evaluations, checkpoints, signals).
Nothing here knows a particular method or data set: they are chosen by name from config;
the evaluators are built by type from ``config.evals`` (``mecjax.evaluators.registry``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mecjax import checkpoint as ckpt_lib
from mecjax import configlib
from mecjax import data as data_lib
from mecjax import evaluators
from mecjax import initialize
from mecjax import loop as loop_lib
from mecjax import methods
from mecjax import models
from mecjax import monitors
from mecjax import optim
from mecjax import parallel
from mecjax import workdir as workdir_lib
from mecjax.evaluators import common as eval_common
from mecjax.evaluators import knn as knn_lib
from mecjax.evaluators import registry as eval_registry

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
  recipe = data_lib.get_recipe(config.aug, size, config.seed)
  log.info("views per image: %d x %d px%s", recipe.num_global, size,
           f" + {recipe.num_local} x {recipe.local_size} px (local)" if recipe.num_local else "")
  t0 = time.time()
  train_src = data_lib.load_config_split(dcfg, dcfg.train_split, dcfg.max_train_examples)
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
  probe_on = config.probe.enabled and num_classes > 0

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

  def init():
    state = jax.jit(init_state, static_argnums=0, out_shardings=repl)(config.seed)
    if init_from:   # continued pre-training: trained weights, fresh optimiser
      params, model_state = jax.device_put(
          initialize.initialize(config, method, state.params, state.model_state), repl)
      state = state.replace(params=params, model_state=model_state,
                            opt_state=jax.jit(tx.init, out_shardings=repl)(params))
    return state

  def make_input(total):
    return data_lib.TrainInput(
        train_src, global_batch=global_batch, seed=config.seed, mesh=mesh, total_steps=total,
        host_transform=recipe.host_transform(), threads=dcfg.host_threads,
        prefetch=dcfg.prefetch_batches, workers=dcfg.host_workers)

  # ------------------------------------------------------------- train step
  update = make_update(method, tx, lr, ema_momentum, probe_net, probe_tx, probe_on)
  p_train_step = make_train_step(recipe, update, mesh)

  # --------------------------------------------------------------- evaluate
  context = eval_context(config, method, recipe, mesh, train_src, num_classes, probe_net)
  evaluations = eval_registry.build_all(config, context, steps_per_epoch)

  # ------------------------------------------------------------------- loop
  return loop_lib.Loop(
      workdir=workdir, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      global_batch=global_batch, abstract=abstract, meta=meta, init=init,
      make_input=make_input, train_step=p_train_step, mesh=mesh,
      log_every=config.log_every_steps,
      checkpoint_every=configlib.duration(config.checkpoint, "every", steps_per_epoch,
                                          steps_per_epoch),
      keep=config.checkpoint.keep, stop_check_every=config.checkpoint.stop_check_every_steps,
      evaluations=evaluations,
      # Logged as the interval's last value (a schedule), the others as the interval's mean.
      schedule_keys=("lr", "ema_momentum") + tuple(method.schedule_metrics)).run()


def eval_context(config, method, recipe, mesh, train_src, num_classes: int, probe_net,
                 bn_mode: str = "eval", queries=None) -> eval_common.Context:
  """What the evaluator types are built from (``eval_common.Context``): the
  backbone's features of a source (un-augmented; BN with running statistics, or each eval
  batch's own in ``bn_mode`` "batch"), computed once per step and source, and the online
  probe's logits of them. The eval split is read on first use, unless ``queries`` gives
  its source."""
  encode = jax.jit(lambda params, ms, images: method.encode(
      params, ms, recipe.eval_view(images), train=bn_mode == "batch"))
  mapper = eval_common.batch_mapper(config, recipe, mesh)
  features = eval_common.StepMemo(
      lambda state, source: mapper(encode, (state.params, state.model_state), source))
  probe_logits = jax.jit(lambda p, f: probe_net.apply({"params": p}, f))
  dcfg = config.data
  return eval_common.Context(
      config=config, train=train_src, num_classes=num_classes, features=features,
      load_eval=lambda: queries if queries is not None else data_lib.load_config_split(
          dcfg, dcfg.eval_split, dcfg.max_eval_examples),
      heads={"probe": lambda state, x: probe_logits(state.probe_params, x)}, bn_mode=bn_mode)


class Evaluator:
  """The kNN monitor and the online probe's accuracy of a train state, outside the loop
  (benchmarks): ``Evaluator(...)(state) -> {'knn_top1', 'probe_top1', 'eval_seconds'}``
  on the given ``bank`` (train split) and ``queries`` (eval split) sources, with
  ``config.knn``'s k and temperature. ``bank`` None skips kNN, ``probe`` (the probe
  module) None skips the probe."""

  def __init__(self, config, method, recipe, mesh, bank, queries, num_classes: int,
               probe: nn.Module | None, bn_mode: str = "eval"):
    context = eval_context(config, method, recipe, mesh, bank, num_classes,
                           probe or evaluators.probe.LinearProbe(max(num_classes, 1)),
                           bn_mode, queries)
    self.evaluators = []
    if queries is not None and bank is not None:
      self.evaluators.append(knn_lib.Evaluator(
          context.features, bank, queries, num_classes=num_classes, k=config.knn.k,
          temperature=config.knn.temperature, note=f"BN in {bn_mode} mode"))
    if queries is not None and probe is not None:
      self.evaluators.append(evaluators.probe.Evaluator(context.features,
                                                        context.heads["probe"], queries))

  def __call__(self, state) -> dict:
    t = time.time()
    out = {k: v for e in self.evaluators for k, v in e.run(state)}
    if self.evaluators:
      out["eval_seconds"] = time.time() - t
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
