"""SimSiam and BYOL: a predictor on the online branch regresses the other view's projection.

SimSiam (Chen & He): one network, the target is the other view's projection under a
stop-gradient, ``loss = (D(p1, z2) + D(p2, z1)) / 2`` with ``D = -mean cos`` (official
``main_simsiam.py``).

BYOL (Grill et al.): the target is an EMA copy of encoder + projector (``optim.ema_target``,
momentum ``config.ema``), run with batch statistics; ``loss = L(p1, t2) + L(p2, t1)`` with
``L = 2 - 2 mean cos``, the sum of the two directions as the official code and solo-learn
compute it.

Multi-crop pairing (``config.aug.num_local = L > 0``), as MEC's: every view's prediction
against the target of each global view other than itself (``pairing.to_globals``: the two
globals crossed, each local view against both global targets; targets come from global
views only, and BYOL's target network forwards only them). SimSiam takes the mean of ``D``
over the ``2 (1 + L)`` pairs; BYOL the mean of ``L`` times 2, keeping the scale of its
two-direction sum. ``L = 0`` gives the losses above.

Both log ``pos_cosine``, the mean cosine of the (prediction, target) pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mecjax import losses
from mecjax.losses.siamese import cosine
from mecjax.methods import pairing
from mecjax.methods.base import Method
from mecjax.methods.teacher import TEACHER_STATS


def _pos_cosine(pairs):
  return jax.lax.stop_gradient(sum(jnp.mean(cosine(a, b)) for a, b in pairs) / len(pairs))


class SimSiam(Method):
  name = "simsiam"

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    sg = jax.lax.stop_gradient
    pairs = [(online[v]["prediction"], sg(online[g]["embedding"]))
             for g, v in pairing.to_globals(len(views), self.num_global)]
    loss = sum(losses.simsiam_loss(p, z) for p, z in pairs) / len(pairs)
    metrics = {"pos_cosine": _pos_cosine(pairs)}
    return loss, self.output(metrics, {"batch_stats": batch_stats}, online), pairs


class BYOL(Method):
  name = "byol"
  uses_target = True

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    teacher, target_stats = self.forward_views(target, state[TEACHER_STATS],
                                               views[:self.num_global], method="embed")
    t = [jax.lax.stop_gradient(out["embedding"]) for out in teacher]
    pairs = [(online[v]["prediction"], t[g])
             for g, v in pairing.to_globals(len(views), self.num_global)]
    # The mean over pairs times 2: the official two-direction sum when there are two views.
    loss = 2 * sum(losses.byol_loss(p, z) for p, z in pairs) / len(pairs)
    metrics = {"pos_cosine": _pos_cosine(pairs)}
    state = {"batch_stats": batch_stats, TEACHER_STATS: target_stats}
    return loss, self.output(metrics, state, online), pairs
