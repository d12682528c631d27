"""Optimisers, per-step schedules and the EMA-target (teacher) optax transformation.

Everything here is optax: ``optax.sgd`` / ``optax.lars`` / ``optax.adamw`` with optax
schedules. The teacher of MEC, BYOL and friends is an optax transformation too
(``ema_target``): its state holds the target parameters, so they are checkpointed, sharded
and restored with the rest of the optimiser state, and ``target_params(opt_state)`` reads
them back for the loss, evaluation and export.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mecjax.configvalues import ConfigError, duration

Schedule = Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------- schedules


def scaled_lr(base_lr: float, global_batch: int) -> float:
  """The linear scaling rule, ``base_lr x global_batch / 256``."""
  return base_lr * global_batch / 256


SCHEDULES = ("optax", "official")


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int,
                  end_value: float = 0.0, convention: str = "optax") -> Schedule:
  """Linear warm-up from 0 to ``peak`` over ``warmup_steps`` (W), then cosine to ``end_value``
  at ``total_steps`` (T); per step. Two conventions (``config.optim.schedule``):

  - ``'optax'``: ``lr(s) = peak s / W`` for ``s < W`` (``peak`` first reached at step W),
    then ``end + (peak - end) (1 + cos(pi (s - W) / (T - W))) / 2`` (optax's
    ``warmup_cosine_decay_schedule``; MoCo v3 and solo-learn warm up the same way).
  - ``'official'``: the per-step array of the official MEC / DINO ``cosine_scheduler``:
    ``np.linspace(0, peak, W)`` for the first W steps (so ``lr(W-1) = peak``, i.e.
    ``peak s / (W - 1)``), then the same cosine with ``i = s - W`` in ``0 .. T-W-1``; steps
    at or past T hold ``end_value`` (the official array has no entries there).
  """
  if convention not in SCHEDULES:
    raise ConfigError(f"config.optim.schedule={convention!r}: expected one of {SCHEDULES}")
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  if convention == "official":
    return _official_warmup_cosine(peak, max(total_steps, 1), warmup_steps, end_value)
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(peak, max(total_steps, 1),
                                       alpha=end_value / peak if peak else 0.0)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(total_steps, 1),
                                            end_value=end_value)


def _official_warmup_cosine(peak, total_steps, warmup_steps, end_value) -> Schedule:
  decay = total_steps - warmup_steps   # >= 1: warmup_steps <= total_steps - 1

  def schedule(count):
    s = jnp.asarray(count, jnp.result_type(float))
    # np.linspace(0, peak, W)[s] = peak s / (W - 1); W = 1 gives [0].
    warm = peak * (s / max(warmup_steps - 1, 1))
    i = jnp.clip(s - warmup_steps, 0, decay)
    cos = end_value + 0.5 * (peak - end_value) * (1 + jnp.cos(jnp.pi * i / decay))
    return jnp.where(s < warmup_steps, warm, cos)
  return schedule


def linspace_warmup(start: float, end: float, warmup_steps: int) -> Schedule:
  """``np.linspace(start, end, W)[s]`` for ``s < W``, then ``end``: the official MEC code's
  per-step ``lamda_inv`` warm-up (``end`` is reached at step W-1; W = 0: constant ``end``)."""
  def schedule(count):
    s = jnp.asarray(count, jnp.result_type(float))
    if warmup_steps <= 0:
      return jnp.full_like(s, end)
    warm = start + (end - start) * (s / max(warmup_steps - 1, 1))
    return jnp.where(s < warmup_steps, warm, end)
  return schedule


def cosine_momentum(base: float, total_steps: int, final: float = 1.0) -> Schedule:
  """EMA momentum ``final - (final - base) (1 + cos(pi k / K)) / 2``: 0.996 -> 1 (BYOL)."""
  gap = optax.cosine_decay_schedule(final - base, max(total_steps, 1))
  return lambda count: final - gap(count)


# --------------------------------------------------------------------- EMA target


class EmaTargetState(NamedTuple):
  """State of ``ema_target``: the update count and the target (teacher) parameters."""
  count: jax.Array
  target: Any


def ema_target(momentum: float | Schedule) -> optax.GradientTransformation:
  """Keep an exponential moving average of the parameters *after* each update.

  Must be the last transformation of the chain, so that the updates it sees are final:
  ``target <- m target + (1 - m) (params + updates)``, with ``m = momentum(count)``.
  ``momentum = 0`` makes the target equal the online parameters (weight sharing, as SimSiam).
  The updates pass through unchanged.
  """
  momentum_fn = momentum if callable(momentum) else (lambda _: momentum)

  def init_fn(params):
    return EmaTargetState(count=jnp.zeros([], jnp.int32),
                          target=jax.tree.map(jnp.array, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("ema_target needs the parameters: call tx.update(grads, state, params)")
    m = jnp.asarray(momentum_fn(state.count), jnp.float32)
    new_params = optax.apply_updates(params, updates)
    target = jax.tree.map(lambda t, p: (m * t + (1 - m) * p).astype(t.dtype), state.target,
                          new_params)
    return updates, EmaTargetState(count=optax.safe_increment(state.count), target=target)

  return optax.GradientTransformation(init_fn, update_fn)


def target_params(opt_state) -> Any | None:
  """The target parameters held by the ``ema_target`` in ``opt_state``, or None if none.

  ``opt_state`` is the live optax state or one restored without its structure
  (``checkpoint.read_state``), where an ``EmaTargetState`` is a dict of its fields.
  ``mecjax.methods.teacher`` reads the whole teacher (parameters and BN statistics)."""
  found = []
  fields = set(EmaTargetState._fields)

  def visit(node):
    if isinstance(node, EmaTargetState):
      found.append(node.target)
      return
    if isinstance(node, dict) and set(node) == fields:   # restored: {"count", "target"}
      found.append(node["target"])
      return
    if isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)
    elif hasattr(node, "inner_state"):  # optax wrappers (masked, multi_transform, ...)
      visit(node.inner_state)

  visit(opt_state)
  if len(found) > 1:
    raise ValueError("optimiser state holds more than one ema_target")
  return found[0] if found else None


# ------------------------------------------------------------------------ optimisers


def not_1d(params):
  """Mask: True for weights (ndim > 1), False for biases and norm scales/offsets."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


class ClippedTrustRatioState(NamedTuple):
  """State of ``scale_by_clipped_trust_ratio``: the update count (the schedule's step)."""
  count: jax.Array


def scale_by_clipped_trust_ratio(learning_rate: float | Schedule, *, trust_coefficient: float,
                                 weight_decay: float, mask=True,
                                 eps: float = 1e-8) -> optax.GradientTransformation:
  """The trust-ratio part of solo-learn's LARS with ``clip_lr: True`` (every CIFAR recipe of
  solo-learn sets it), before momentum and the learning rate. Per tensor ``p`` with gradient
  ``g``, at step t with learning rate ``lr_t``:

      r = eta ||p|| / (||g|| + wd ||p|| + eps)
      d = min(r / lr_t, 1) (g + wd p)     where mask(p), ||p|| > 0 and ||g|| > 0
      d = g                               elsewhere (no decay either)

  After momentum and ``p -= lr_t v`` a tensor moves by ``min(r, lr_t)`` times its decayed
  gradient: plain SGD while the gradient is small against the weights, the trust ratio only
  as a cap. optax.lars (``lars_clip_lr=False``) instead always moves by ``lr_t r`` with
  ``||g + wd p||`` in the denominator: a fixed relative step ``lr_t eta`` whatever the
  gradient's size, so noise on a flat loss is followed as fast as signal.
  """
  lr_fn = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

  def init_fn(params):
    del params
    return ClippedTrustRatioState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("the clipped LARS needs the parameters: tx.update(grads, state, params)")
    lr_t = jnp.asarray(lr_fn(state.count), jnp.float32)
    masks = mask(params) if callable(mask) else jax.tree.map(lambda _: mask, params)

    def one(g, p, adapt):
      if not adapt:
        return g
      p_norm, g_norm = jnp.linalg.norm(p), jnp.linalg.norm(g)
      ratio = trust_coefficient * p_norm / (g_norm + weight_decay * p_norm + eps)
      scale = jnp.where(ratio < lr_t, ratio / lr_t, 1.0)   # min(ratio / lr_t, 1); 1 at lr 0
      ok = (p_norm > 0) & (g_norm > 0)
      return jnp.where(ok, scale * (g + weight_decay * p), g).astype(g.dtype)

    updates = jax.tree.map(one, updates, params, masks)
    return updates, ClippedTrustRatioState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(cfg, learning_rate: float | Schedule) -> optax.GradientTransformation:
  """The optimiser named by ``cfg.name`` (config.optim).

  - ``sgd``: PyTorch SGD semantics, weight decay added to the gradient before momentum.
  - ``lars``: optax.lars; with ``exclude_1d`` biases and norm parameters are excluded from
    both the trust-ratio adaptation and the weight decay. With ``lars_clip_lr`` the
    trust ratio is solo-learn's clipped one instead (``scale_by_clipped_trust_ratio``),
    followed by PyTorch's momentum (``buf = m buf + d``) and ``p -= lr_t buf``.
  - ``adamw``: optax.adamw (decoupled decay); ``exclude_1d`` masks the decay.
  """
  mask = not_1d if cfg.exclude_1d else None
  if cfg.name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask) if cfg.weight_decay else
        optax.identity(),
        optax.sgd(learning_rate, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  if cfg.name == "lars" and cfg.lars_clip_lr:
    return optax.chain(
        scale_by_clipped_trust_ratio(learning_rate, trust_coefficient=cfg.trust_coefficient,
                                     weight_decay=cfg.weight_decay,
                                     mask=mask if mask else True),
        optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov),
        optax.scale_by_learning_rate(learning_rate))
  if cfg.name == "lars":
    return optax.lars(learning_rate, weight_decay=cfg.weight_decay,
                      weight_decay_mask=mask if mask else True,
                      trust_coefficient=cfg.trust_coefficient, eps=0.0,
                      trust_ratio_mask=mask if mask else True, momentum=cfg.momentum,
                      nesterov=cfg.nesterov)
  if cfg.name == "adamw":
    return optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                       mask=mask)
  raise ConfigError(f"config.optim.name={cfg.name!r}: expected one of 'sgd', 'lars', 'adamw'")


def make_tx(config, run, uses_target: bool, frozen=None):
  """(optimiser, lr schedule, EMA momentum schedule or None) as ``config.optim`` / ``ema`` say:
  lr = base_lr x global batch / 256, warm-up then cosine per step; the EMA target last.
  ``frozen`` (``Method.frozen_mask()``): parameters whose updates, weight decay included,
  are zeroed, so they stay at their initial values. ``run``: the run's sizes
  (``global_batch``, ``steps_per_epoch``, ``total_steps``; ``methods.RunInfo``)."""
  peak = scaled_lr(config.optim.base_lr, run.global_batch)
  warmup = duration(config.optim, "warmup", run.steps_per_epoch, default=0)
  lr = warmup_cosine(peak, run.total_steps, warmup, config.optim.end_lr_factor * peak,
                     convention=config.optim.schedule)
  tx = make_optimizer(config.optim, lr)
  if frozen is not None:
    tx = optax.chain(tx, optax.masked(optax.set_to_zero(), frozen))
  ema_momentum = None
  if uses_target:
    ema_momentum = cosine_momentum(config.ema.momentum, run.total_steps,
                                   config.ema.final_momentum)
    tx = optax.chain(tx, ema_target(ema_momentum))
  return tx, lr, ema_momentum
