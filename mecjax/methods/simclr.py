"""SimCLR: a symmetric twin network with NT-Xent over the global batch (``losses.infonce_loss``:
2N - 2 negatives per anchor, the mean over the 2N anchors, as solo-learn computes it; the
TensorFlow original reports twice this).

Multi-crop pairing (``config.aug.num_local = L > 0``): each local view with each global view,
and the two globals together (``pairing.with_globals``, ``1 + 2L`` pairs), each pair's NT-Xent
over its own ``2N`` rows, the loss their mean (``L = 0``: the loss above). This is how the
SwAV paper (Fig. 3 and appendix A.8) applies multi-crop to SimCLR, with a +2.4 point gain.

Logged: ``pos_cosine`` (mean cosine of the positive pairs) and ``contrastive_acc``, the share of
anchors whose positive is their most similar other row (the official ``contrast_acc``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mecjax import losses
from mecjax.losses.mec import l2_normalize
from mecjax.losses.siamese import cosine
from mecjax.methods import pairing
from mecjax.methods.base import Method


def contrastive_accuracy(z1, z2):
  """Share of the 2N anchors whose positive is the nearest (cosine) of the other 2N - 1."""
  z = l2_normalize(jnp.concatenate([z1, z2]).astype(jnp.float32))
  n = z1.shape[0]
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, z @ z.T)
  positive = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
  return jnp.mean(jnp.argmax(sim, axis=-1) == positive)


class SimCLR(Method):
  name = "simclr"

  @staticmethod
  def defaults():
    # config.simclr: the NT-Xent temperature.
    return dict(temperature=0.2)

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    z = [o["embedding"] for o in online]
    pairs = [(z[a], z[b]) for a, b in pairing.with_globals(len(views), self.num_global)]
    temperature = self.config.simclr.temperature
    loss = sum(losses.infonce_loss(a, b, temperature=temperature) for a, b in pairs) / len(pairs)
    sg = jax.lax.stop_gradient
    mean = lambda f: sg(sum(f(a, b) for a, b in pairs) / len(pairs))
    metrics = {"pos_cosine": mean(lambda a, b: jnp.mean(cosine(a, b))),
               "contrastive_acc": mean(contrastive_accuracy)}
    return loss, self.output(metrics, {"batch_stats": batch_stats}, online), pairs
