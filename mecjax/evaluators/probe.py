"""Online linear probe (solo-learn, BYOL): a linear classifier trained alongside
pre-training on stop-gradient backbone features of the augmented views, with its own SGD.

Its accuracy on the un-augmented eval split, from eval-mode features, is ``probe_top1``.
Rows labelled -1 (unlabelled or padding) are ignored.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class LinearProbe(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, features):
    return nn.Dense(self.num_classes, name="linear")(jax.lax.stop_gradient(features))


def make_optimizer(cfg) -> optax.GradientTransformation:
  """SGD with momentum (and decay) for the probe, at a constant ``cfg.lr`` (config.probe)."""
  return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity(),
      optax.sgd(cfg.lr, momentum=cfg.momentum or None))


def loss_and_accuracy(logits: jax.Array, labels: jax.Array):
  """Masked mean cross-entropy and top-1 accuracy over rows with ``label >= 0``."""
  valid = labels >= 0
  safe = jnp.where(valid, labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  n = jnp.maximum(jnp.sum(valid), 1)
  loss = jnp.sum(jnp.where(valid, ce, 0.0)) / n
  acc = jnp.sum((jnp.argmax(logits, -1) == labels) & valid) / n
  return loss, acc
