"""Online linear probe (solo-learn, BYOL): a linear classifier trained alongside
pre-training on stop-gradient backbone features of the augmented views, with its own SGD.

Its accuracy on the un-augmented eval split, from eval-mode features, is ``probe_top1``.
Rows labelled -1 (unlabelled or padding) are ignored. As an evaluator (type ``probe`` of
``config.evals``): ``Evaluator(features, logits, queries)`` yields ``probe_top1``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mecjax.evaluators import common


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


class Evaluator:
  """The online probe's top-1 on ``queries``: the fraction of rows whose label is the
  argmax (a row labelled -1 counts, never correct, as the monitor always counted it).

  Args:
    features: ``features(state, source) -> (features (N, F), labels (N,))`` on the host.
    logits: ``logits(state, features) -> (N, C)``: the probe of the train state.
    queries: the labelled eval split's source.
  """

  def __init__(self, features, logits, queries):
    self.features, self.logits, self.queries = features, logits, queries

  def run(self, state):
    x, labels = self.features(state, self.queries)
    predicted = np.argmax(np.asarray(jax.device_get(self.logits(state, x))), -1)
    yield "probe_top1", float(np.mean(predicted == labels)) if len(labels) else 0.0


def build(name: str, cfg, context: common.Context) -> Evaluator | None:
  """The ``probe`` evaluator of ``config.evals.<name>``: none when ``config.probe.enabled``
  is False (no probe is trained) or the data is unlabelled."""
  if not context.config.probe.enabled or not context.num_classes:
    return None
  return Evaluator(context.features, context.heads["probe"], context.eval)
