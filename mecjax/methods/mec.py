"""MEC: Maximum Entropy Coding with an EMA teacher, as the official code trains it.

Network: encoder -> projector -> predictor (online); the teacher is encoder -> projector
with the EMA target parameters (``optim.ema_target``), run with batch statistics, no
gradient. With the EMA momentum 0 throughout (weight sharing) the teacher's outputs are the
online embeddings under a stop-gradient, reused rather than recomputed. Views pair crossed:
teacher of view 1 with the online prediction of view 2 and the reverse,

    loss = ( mec_loss(t1, o2) + mec_loss(t2, o1) ) / 2
         = -(lamda_inv / 2m) (T(t1, o2) + T(t2, o1))

with ``lamda_inv = m eps² / d`` warmed up linearly from ``8 lamda_inv`` over the first 10
epochs (per step, ``np.linspace`` as the official code), ``m`` the global batch and ``d``
the embedding width.

``config.mec.objective = 'logdet'`` replaces each ``mec_loss`` by the exact, bounded
``mec_logdet`` the series approximates. ``config.mec.adapt_bound = b`` keeps ``||C||_2``
near or under ``b``: ``lamda_inv = scale x schedule(step)`` with ``scale`` in the method
state (checkpointed), updated after every step from the logged ``c_norm`` by
``losses.adapt_lamda_scale``: ``scale <- max(1, scale c_norm / b)``.

Multi-crop pairing (``config.aug.num_local = L > 0``): every view's online prediction
against each global teacher output other than its own view (``pairing.to_globals``): the
two globals crossed as above, and each local view against both global teachers; the teacher
forwards the global views only. The loss is the mean over these ``2 (1 + L)`` pairs,

    loss = 1 / (2 (1 + L)) Σ_{g ∈ {1,2}} Σ_{v ≠ g} mec_loss(t_g, o_v),

so ``L = 0`` is the two-view loss above, term for term. Every pair has ``m`` rows, so
``lamda_inv`` is unchanged.

Logged: ``mec`` = ``mu (T1 + T2) / 2m`` with ``mu = (m + d) / 2`` (the paper's per-sample coding
length, which never enters the gradient; with local views ``mu`` times the pair-mean of
``T / m``), ``lamda_inv``, ``c_norm`` (an estimate of ``||C||_2`` of the first pairing: the
Taylor series diverges at 1) and ``pos_cosine`` (the mean cosine of the positive pairs, over
all pairs; the order-1 term of the loss is minus it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ml_collections import config_dict

from mecjax import losses
from mecjax.configvalues import ConfigError
from mecjax.losses.mec import l2_normalize
from mecjax.methods import pairing
from mecjax.methods.base import Method
from mecjax.methods.regularizers import lamda_inv_schedule
from mecjax.methods.teacher import TEACHER_STATS


class MEC(Method):
  name = "mec"
  uses_target = True
  schedule_metrics = ("lamda_inv", "lamda_scale")
  refuses_regularizers = ("mec",)

  @staticmethod
  def defaults():
    # config.mec: also read by the "mec" regulariser (methods/regularizers.py).
    return dict(
        eps_sq=64.0,                    # official --eps: lamda_inv = batch * eps_sq / out_dim
        order=4,
        lamda_warmup_factor=8.0,        # lamda_inv warms up from factor x lamda_inv
        lamda_warmup_steps=config_dict.placeholder(int),
        lamda_warmup_epochs=config_dict.placeholder(float),
        # "taylor": the official order-n series (diverges once ||C||_2 > 1); "logdet": the
        # exact -(lamda_inv/m) log|det(I + C)| it approximates, bounded (losses.mec_logdet).
        objective="taylor",
        # Adaptive lamda_inv (method mec only): after each step lamda_inv's multiplier
        # becomes max(1, scale ||C||_2 / adapt_bound) (losses.adapt_lamda_scale), kept in the
        # method state; None: off. The series converges for ||C||_2 < 1.
        adapt_bound=config_dict.placeholder(float),
    )

  def __init__(self, config, run):
    super().__init__(config, run)
    self.out_dim = config.predictor.out_dim or config.projector.out_dim
    self.mu = (run.global_batch + self.out_dim) / 2
    self.lamda_inv = lamda_inv_schedule(config.mec, run, self.out_dim)
    if config.mec.objective not in losses.mec.OBJECTIVES:
      raise ConfigError(f"config.mec.objective={config.mec.objective!r}: expected one of "
                        f"{list(losses.mec.OBJECTIVES)}")
    # EMA momentum 0 at every step (``ema.momentum = ema.final_momentum = 0``: weight sharing,
    # SimSiam's structure): the target equals the online parameters, and BN in train mode
    # normalises by the batch whatever its running statistics, so the teacher's outputs are
    # the online embeddings of the global views. They are reused under a stop-gradient
    # instead of a second forward pass (a quarter of the step's FLOPs), and the teacher's
    # statistics follow the online ones.
    self.shares_weights = (float(config.ema.momentum) == 0.0
                           and float(config.ema.final_momentum) == 0.0)
    self.adapt_bound = config.mec.adapt_bound
    if self.adapt_bound is not None and not self.adapt_bound > 0:
      raise ConfigError(f"config.mec.adapt_bound={self.adapt_bound}: expected a positive "
                        "bound on ||C||_2 (e.g. 0.9) or None")

  def init(self, rng, image_shape):
    params, state = super().init(rng, image_shape)
    if self.adapt_bound is not None:
      state["lamda_scale"] = jnp.ones([], jnp.float32)
    return params, state

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    if self.shares_weights:
      teacher, target_stats = online[:self.num_global], batch_stats
    else:
      teacher, target_stats = self.forward_views(target, state[TEACHER_STATS],
                                                 views[:self.num_global], method="embed")
    t = [jax.lax.stop_gradient(o["embedding"]) for o in teacher]
    o = [out["prediction"] for out in online]
    pairs = [(t[g], o[v]) for g, v in pairing.to_globals(len(views), self.num_global)]

    cfg = self.config.mec
    lamda_inv = self.lamda_inv(step)
    if self.adapt_bound is not None:
      lamda_inv = lamda_inv * state["lamda_scale"]
    loss = sum(losses.mec_objective(a, b, lamda_inv=lamda_inv, order=cfg.order,
                                    objective=cfg.objective) for a, b in pairs) / len(pairs)
    c_norm = losses.mec_spectral_norm(*pairs[0], lamda_inv=lamda_inv)

    cosine = lambda a, b: jnp.mean(jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1))
    metrics = {
        # T = -(m / lamda_inv) mec_loss, so mu (T1 + T2) / 2m = -mu loss / lamda_inv.
        "mec": jax.lax.stop_gradient(-self.mu * loss / lamda_inv),
        "lamda_inv": lamda_inv,
        "c_norm": c_norm,
        # The order-1 term of the loss is minus this mean positive-pair cosine.
        "pos_cosine": jax.lax.stop_gradient(sum(cosine(a, b) for a, b in pairs) / len(pairs)),
    }
    new_state = {"batch_stats": batch_stats, TEACHER_STATS: target_stats}
    if self.adapt_bound is not None:
      new_state["lamda_scale"] = losses.adapt_lamda_scale(state["lamda_scale"], c_norm,
                                                          self.adapt_bound)
      metrics["lamda_scale"] = state["lamda_scale"]
    # MEC's own pairs are (teacher, online); E2MC acts on the online embeddings.
    return loss, self.output(metrics, new_state, online), []
