"""SimSiam and BYOL: a predictor on the online branch regresses the other view's projection.

SimSiam (Chen & He): one network, the target is the other view's projection under a
stop-gradient, ``loss = (D(p1, z2) + D(p2, z1)) / 2`` with ``D = -mean cos`` (official
``main_simsiam.py``).

BYOL (Grill et al.): the target is an EMA copy of encoder + projector (``optim.ema_target``,
momentum ``config.ema``), run with batch statistics; ``loss = L(p1, t2) + L(p2, t1)`` with
``L = 2 - 2 mean cos``, the sum of the two directions as the official code and solo-learn
compute it.

Both log ``pos_cosine``, the mean cosine of the (prediction, target) pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mecjax import losses
from mecjax.losses.siamese import cosine
from mecjax.methods.base import Method


def _pos_cosine(pairs):
  return jax.lax.stop_gradient(sum(jnp.mean(cosine(a, b)) for a, b in pairs) / len(pairs))


class SimSiam(Method):
  name = "simsiam"

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    (p1, p2), (z1, z2) = ([o[k] for o in online] for k in ("prediction", "embedding"))
    sg = jax.lax.stop_gradient
    pairs = [(p1, sg(z2)), (p2, sg(z1))]
    loss = (losses.simsiam_loss(p1, z2) + losses.simsiam_loss(p2, z1)) / 2
    metrics = {"pos_cosine": _pos_cosine(pairs)}
    return loss, self.output(metrics, {"batch_stats": batch_stats}, online), pairs


class BYOL(Method):
  name = "byol"
  uses_target = True

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    teacher, target_stats = self.forward_views(target, state["target_batch_stats"], views,
                                               method="embed")
    p1, p2 = (o["prediction"] for o in online)
    t1, t2 = (jax.lax.stop_gradient(t["embedding"]) for t in teacher)
    pairs = [(p1, t2), (p2, t1)]
    loss = losses.byol_loss(p1, t2) + losses.byol_loss(p2, t1)
    metrics = {"pos_cosine": _pos_cosine(pairs)}
    state = {"batch_stats": batch_stats, "target_batch_stats": target_stats}
    return loss, self.output(metrics, state, online), pairs
