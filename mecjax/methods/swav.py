"""SwAV: swapped prediction of Sinkhorn-Knopp codes over learned prototypes (Caron et al.,
``facebookresearch/swav`` ``main_swav.py``, as solo-learn runs it on CIFAR).

Network: encoder -> projector (``Linear-BN-ReLU-Linear``, no output BN) -> L2 normalisation ->
prototypes (``K`` unit-norm vectors, a ``(d, K)`` kernel without bias). Each step:

- the prototypes are unit-norm (``project_params`` renormalises them after every update, the
  official code at the start of every step);
- codes of the two global views: ``sinkhorn(scores / epsilon)`` over the global batch, with the
  queue's rows (earlier batches' normalised embeddings, scored by the current prototypes)
  prepended once the queue is full, keeping only the batch's rows;
- ``loss = swav_loss(scores, codes, temperature)``;
- for the first ``freeze_prototypes`` steps the prototypes get no gradient (the official code
  drops their gradient: it stabilises the start);
- from ``queue_start`` on, the views' normalised embeddings enter the queue (newest first);
  it is used once it is full, as the official ``use_the_queue``. Its length is
  ``queue_size`` rounded down to a multiple of the global batch, as the official code does.

The queue and its fill count are method state (checkpointed, replicated).

Multi-crop pairing (``config.aug.num_local = L > 0``, SwAV's own multi-crop): codes come from
the two global views only (and only they enter the queue); every view, local ones included,
predicts the code of each global view other than itself, and ``swav_loss`` averages the
``2 (1 + L)`` cross-entropies as the official loop does (per code view over its ``V - 1``
predicting views, then over the code views). The pairs handed to a regulariser are the
embedding pairs with a global view (``pairing.with_globals``; ``(z1, z2)`` with two views).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_dict

from mecjax.configvalues import duration
from mecjax import losses
from mecjax import models
from mecjax.losses.mec import l2_normalize
from mecjax.models.heads import linear_init
from mecjax.methods import pairing
from mecjax.methods.base import Method, SSLNet, mlp_head


class Prototypes(nn.Module):
  """``normalize(z) @ W``: scores of ``K`` prototypes (columns of the ``(d, K)`` kernel)."""
  num_prototypes: int

  @nn.compact
  def __call__(self, z, train: bool = True):
    kernel = self.param("prototypes", linear_init,
                        (z.shape[-1], self.num_prototypes))
    return l2_normalize(z.astype(jnp.float32)) @ kernel


def normalize_prototypes(kernel):
  return kernel / jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), 1e-12)


class SwAV(Method):
  name = "swav"

  @staticmethod
  def defaults():
    # config.swav: K prototypes, the softmax temperature of the predictions, Sinkhorn-Knopp's
    # epsilon and iterations, the queue of past head outputs (used from queue_start on) and
    # how long the prototypes stay frozen from the start (both unset: 0).
    placeholder = config_dict.placeholder
    return dict(num_prototypes=3000, temperature=0.1, epsilon=0.05, iterations=3,
                queue_size=3840,      # rounded down to a multiple of the global batch; 0: none
                queue_start_steps=placeholder(int), queue_start_epochs=placeholder(float),
                freeze_prototypes_steps=placeholder(int),
                freeze_prototypes_epochs=placeholder(float))

  def __init__(self, config, run):
    super().__init__(config, run)
    cfg = config.swav
    spe = run.steps_per_epoch
    self.queue_len = cfg.queue_size - cfg.queue_size % run.global_batch if cfg.queue_size else 0
    self.queue_start = duration(cfg, "queue_start", spe, default=0)
    self.freeze_steps = duration(cfg, "freeze_prototypes", spe, default=0)
    self.width = config.projector.out_dim

  def build_network(self):
    cfg = self.config
    dtype = models.dtype_of(cfg.model)
    return SSLNet(encoder=models.get_encoder(cfg.model),
                  projector=mlp_head(cfg.projector, dtype, models.kernels_of(cfg.model)),
                  predictor=Prototypes(cfg.swav.num_prototypes))

  def init(self, rng, image_shape):
    params, state = super().init(rng, image_shape)
    if self.queue_len:
      state["queue"] = jnp.zeros((self.num_global, self.queue_len, self.width), jnp.float32)
      state["queue_filled"] = jnp.zeros([], jnp.int32)
    return params, state

  def project_params(self, params):
    predictor = dict(params["predictor"])
    predictor["prototypes"] = normalize_prototypes(predictor["prototypes"])
    return {**params, "predictor": predictor}

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    cfg = self.config.swav
    online, batch_stats = self.forward_views(params, state["batch_stats"], views,
                                             method="embed")
    kernel = params["predictor"]["prototypes"]
    if self.freeze_steps:
      kernel = jnp.where(step < self.freeze_steps, jax.lax.stop_gradient(kernel), kernel)
    embeddings = [l2_normalize(o["embedding"].astype(jnp.float32)) for o in online]
    scores = [e @ kernel for e in embeddings]

    sg = jax.lax.stop_gradient
    new_state = {"batch_stats": batch_stats}
    codes = []
    for i, s in enumerate(scores[:self.num_global]):   # codes of the global views only
      s = sg(s)
      if self.queue_len:
        queued = sg(state["queue"][i] @ kernel)
        code = jax.lax.cond(
            state["queue_filled"] >= self.queue_len,
            lambda q, s: losses.sinkhorn(jnp.concatenate([q, s]), epsilon=cfg.epsilon,
                                         iterations=cfg.iterations)[q.shape[0]:],
            lambda q, s: losses.sinkhorn(s, epsilon=cfg.epsilon, iterations=cfg.iterations),
            queued, s)
      else:
        code = losses.sinkhorn(s, epsilon=cfg.epsilon, iterations=cfg.iterations)
      codes.append(code)
    loss = losses.swav_loss(scores, codes, temperature=cfg.temperature)

    metrics = {}
    if self.queue_len:
      active = step >= self.queue_start
      batch = embeddings[0].shape[0]
      pushed = jnp.stack([jnp.concatenate([sg(e), q[:-batch]])
                          for e, q in zip(embeddings[:self.num_global], state["queue"])])
      new_state["queue"] = jnp.where(active, pushed, state["queue"])
      new_state["queue_filled"] = jnp.where(
          active, jnp.minimum(state["queue_filled"] + batch, self.queue_len),
          state["queue_filled"])
      metrics["queue_in_use"] = (state["queue_filled"] >= self.queue_len).astype(jnp.float32)
    # How many prototypes the codes spread over: exp(entropy of the mean code), K at
    # equipartition, 1 when every sample goes to one prototype.
    mean_code = jnp.mean(codes[0], axis=0)
    metrics["code_perplexity"] = jnp.exp(-jnp.sum(mean_code * jnp.log(mean_code + 1e-12)))
    # The embedding for E2MC and the monitors is the un-normalised head output.
    z = [o["embedding"] for o in online]
    return loss, self.output(metrics, new_state, online), \
        [(z[a], z[b]) for a, b in pairing.with_globals(len(views), self.num_global)]
