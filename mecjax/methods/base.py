"""What every method gives the loop, and the network wrapper methods share.

A method owns its network (encoder + heads), its non-trainable state (BN statistics, and
whatever else it keeps: a queue, the teacher's statistics), how views pair, and which loss
terms it logs. The loop owns everything else: optimiser, sharding, checkpoints, evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mecjax import models
from mecjax.methods import teacher
from mecjax.configvalues import ConfigError


@dataclasses.dataclass(frozen=True)
class RunInfo:
  """Run-level numbers a method may need (schedules, the global batch of its loss)."""
  global_batch: int
  steps_per_epoch: int
  total_steps: int


class SSLNet(nn.Module):
  """encoder -> projector -> predictor; each head optional.

  ``__call__`` returns ``{'features', 'embedding', 'prediction'}`` (the last two fall back to
  the previous output when a head is absent); ``embed`` stops before the predictor (a
  teacher's path); ``features`` is the encoder alone (evaluation).
  """
  encoder: nn.Module
  projector: nn.Module | None = None
  predictor: nn.Module | None = None

  def embed(self, x, train: bool = True):
    features = self.encoder(x, train=train)
    z = self.projector(features, train=train) if self.projector is not None else features
    return as_float32({"features": features, "embedding": z})

  def __call__(self, x, train: bool = True):
    out = self.embed(x, train)
    z = out["embedding"]
    out["prediction"] = (as_float32(self.predictor(z, train=train))
                         if self.predictor is not None else z)
    return out

  def features(self, x, train: bool = False):
    return as_float32(self.encoder(x, train=train))


def as_float32(tree):
  """Every array of ``tree`` in at least float32 (float64 stays float64).

  Mixed precision: the network may compute in bfloat16 (``config.model.dtype``), but its
  outputs leave it here, the one place, in float32, so every loss and its reductions (the
  MEC series, MUSIC's logs, E2MC's sorts), the monitors and the evaluators run in float32.
  """
  return jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree)


def mlp_head(cfg, dtype, kernels: str = "auto") -> models.MLPHead | None:
  """An MLPHead from a ``config.projector`` / ``config.predictor`` block (None if out_dim=0);
  ``kernels``: ``config.model.kernels``."""
  if not cfg.out_dim:
    return None
  # The command line can only spell None as a string: --config.projector.out_bn=none.
  out_bn = None if str(cfg.out_bn).lower() in ("none", "") else cfg.out_bn
  return models.MLPHead(hidden=tuple(cfg.hidden), out_dim=cfg.out_dim, out_bn=out_bn,
                        out_bias=cfg.get("out_bias", True), dtype=dtype, kernels=kernels)


def apply(net: nn.Module, params, batch_stats, x, *, train: bool, method=None):
  """Apply ``net``; returns (output, batch_stats after the call)."""
  variables = {"params": params, "batch_stats": batch_stats}
  if not train:
    return net.apply(variables, x, train=False, method=method), batch_stats
  out, mutated = net.apply(variables, x, train=True, mutable=["batch_stats"], method=method)
  return out, mutated["batch_stats"]


@dataclasses.dataclass
class LossOutput:
  """What ``Method.loss`` returns beside the scalar loss.

  metrics: scalars to log (the loop adds lr, probe and timing figures).
  state: the method's non-trainable state after the step.
  features: stop-gradient backbone features of each global view, for the online probe.
  embeddings: the online embeddings (B, d) of the global views, with gradient: projector
    output before any normalisation (the collapse monitors read the first; E2MC the first
    two). Local views (multi-crop) are in neither.
  local_embeddings: the same for the local views, in order (empty without multi-crop): the
    regularisers over all views (MMCR) read them.
  """
  metrics: dict
  state: Any
  features: list
  embeddings: list
  local_embeddings: list = dataclasses.field(default_factory=list)


jax.tree_util.register_dataclass(LossOutput, data_fields=["metrics", "state", "features",
                                                          "embeddings", "local_embeddings"],
                                 meta_fields=[])


class Method:
  """Base of the methods. Subclasses set ``uses_target`` and implement ``objective``.

  ``loss`` is what the loop differentiates: the method's ``objective`` plus, when
  ``config.regularizer.name`` is set, that regulariser on the pairs the objective names
  (MEC on SimCLR's projections, on SimSiam's (prediction, stop-gradient projection), ...)
  or on the online embeddings (E2MC).
  """

  name = "base"
  uses_target = False   # keep an EMA target (teacher) in the optimiser state
  schedule_metrics: tuple[str, ...] = ()   # metrics that are schedules: logged as last value
  refuses_regularizers: tuple[str, ...] = ()   # regularisers that are already the objective
  # Why the method refuses local views (config.aug.num_local > 0); None: it pairs them by the
  # rule in its docstring.
  refuses_local_views: str | None = None

  @staticmethod
  def defaults() -> dict | None:
    """The method's own config block, ``config.<name>``: its keys and defaults (values, or
    ``config_dict.placeholder(type)`` for an unset key), or None for a method with no
    constants of its own. ``configlib.base()`` adds the block of every method in
    ``mecjax.methods.METHODS`` (and of every regulariser in ``REGULARIZERS``) to the schema,
    so a new method declares its keys here and edits no global schema. Called once per
    schema built: the dict and its placeholders must be new each call (a placeholder is a
    shared reference)."""
    return None

  def __init__(self, config, run: RunInfo):
    self.config, self.run = config, run
    # Views arrive as the aug.num_global_views global ones, then aug.num_local local ones
    # (mecjax.data.augment).
    self.num_global = int(config.aug.num_global_views)
    self.num_local = int(config.aug.get("num_local", 0) or 0)
    if self.num_local and self.refuses_local_views:
      raise ConfigError(f"config.aug.num_local={self.num_local}: {self.name} takes no local "
                        f"views ({self.refuses_local_views}); set it to 0")
    self.net = self.build_network()
    self.regularizer = None
    reg = config.regularizer
    if reg.name:
      if reg.name in self.refuses_regularizers:
        raise ConfigError(f"config.regularizer.name={reg.name!r}: method {self.name!r} takes "
                          "no such regulariser (it is already its objective)")
      self.regularizer = get_regularizer(reg, config, run)
      self.schedule_metrics = tuple(self.schedule_metrics) + tuple(
          f"reg_{k}" for k in self.regularizer.schedule_metrics)

  def build_network(self) -> nn.Module:
    cfg = self.config
    dtype = models.dtype_of(cfg.model)
    kernels = models.kernels_of(cfg.model)
    return SSLNet(encoder=models.get_encoder(cfg.model),
                  projector=mlp_head(cfg.projector, dtype, kernels),
                  predictor=mlp_head(cfg.predictor, dtype, kernels))

  def init(self, rng, image_shape) -> tuple[Any, Any]:
    """(params, state) for one view of shape (B, H, W, C)."""
    variables = self.net.init(rng, jnp.zeros(image_shape, jnp.float32), train=True)
    state = {"batch_stats": variables["batch_stats"]}
    if self.uses_target:
      state = teacher.init_stats(state, variables["batch_stats"])
    return variables["params"], state

  def encode(self, params, state, images, train: bool = False) -> jax.Array:
    """Backbone features: kNN, probe, export. BN in eval mode (running statistics) unless
    ``train``, which normalises with the statistics of ``images`` (the running statistics
    are left as they are)."""
    variables = {"params": params, "batch_stats": state["batch_stats"]}
    if train:
      out, _ = self.net.apply(variables, images, train=True, method=SSLNet.features,
                              mutable=["batch_stats"])
      return out
    return self.net.apply(variables, images, train=False, method=SSLNet.features)

  def objective(self, params, state, target, views, step
                ) -> tuple[jax.Array, LossOutput, list[tuple[jax.Array, jax.Array]]]:
    """(loss, LossOutput, pairs): ``pairs`` are the (a, b) embedding pairs a regulariser
    acts on, with the method's own stop-gradients already applied."""
    raise NotImplementedError

  def loss(self, params, state, target, views, step) -> tuple[jax.Array, LossOutput]:
    loss, out, pairs = self.objective(params, state, target, views, step)
    if self.regularizer is None:
      return loss, out
    reg_loss, reg_metrics = self.regularizer(pairs, out.embeddings, step,
                                             local=out.local_embeddings)
    metrics = dict(out.metrics, objective=jax.lax.stop_gradient(loss),
                   **{f"reg_{k}": v for k, v in reg_metrics.items()})
    return loss + self.config.regularizer.weight * reg_loss, dataclasses.replace(
        out, metrics=metrics)

  def project_params(self, params):
    """Applied to the parameters after init and after every update (a constraint, such as
    SwAV's unit-norm prototypes). Default: none."""
    return params

  def frozen_mask(self):
    """None, or ``params -> mask`` (True: the optimiser leaves that parameter at its initial
    value, weight decay included): the encoder's frozen submodules
    (``models.frozen_modules``, e.g. MoCo v3's random patch projection of a ViT)."""
    names = models.frozen_modules(self.config.model)
    if not names:
      return None

    def mask(params):
      return {part: jax.tree_util.tree_map_with_path(
          lambda path, _: part == "encoder" and path[0].key in names, tree)
          for part, tree in params.items()}
    return mask

  # Helpers for subclasses -------------------------------------------------------

  def check_views(self, views, expected: int = 2) -> None:
    """``expected`` global views, then ``config.aug.num_local`` local ones."""
    if self.num_global != expected or len(views) != expected + self.num_local:
      raise ValueError(
          f"{self.name} pairs {expected} global views and config.aug.num_local="
          f"{self.num_local} local ones, got {len(views)} views "
          f"(config.aug.num_global_views={self.num_global})")

  def output(self, metrics: dict, state, online: list) -> LossOutput:
    """LossOutput with the stop-gradient features (probe) and embeddings of the global
    views' online outputs: the probe, the collapse monitors and E2MC never see local
    views."""
    local = online[self.num_global:]
    online = online[:self.num_global]
    return LossOutput(metrics=metrics, state=state,
                      features=[jax.lax.stop_gradient(o["features"]) for o in online],
                      embeddings=[o["embedding"] for o in online],
                      local_embeddings=[o["embedding"] for o in local])

  def forward_views(self, params, batch_stats, views, method=None):
    """Outputs of every view, in order, and the running BN statistics after them.

    The global views (the first ``num_global``) are forwarded one at a time: per-view BN
    statistics over the global batch, as the official MEC code does. The local views (any
    after them, all of one size) are concatenated and forwarded as one batch of
    ``num_local x B`` rows, as SwAV and DINO forward each crop size: one BN statistic over
    all local crops, and one call instead of ``num_local``. The running statistics are
    threaded through the calls as PyTorch's sequential calls do.
    """
    outs = []
    for v in views[:self.num_global]:
      out, batch_stats = apply(self.net, params, batch_stats, v, train=True, method=method)
      outs.append(out)
    local = views[self.num_global:]
    if local:
      out, batch_stats = apply(self.net, params, batch_stats, jnp.concatenate(local),
                               train=True, method=method)
      outs += [dict(zip(out, parts)) for parts in
               zip(*(jnp.split(x, len(local)) for x in out.values()))]
    return outs, batch_stats


def get_regularizer(reg_cfg, config, run: RunInfo):
  """The additive regulariser named by ``config.regularizer.name``."""
  from mecjax.methods import regularizers   # imports this module
  if reg_cfg.name not in regularizers.REGULARIZERS:
    raise ConfigError(f"config.regularizer.name={reg_cfg.name!r}: expected one of "
                      f"{sorted(regularizers.REGULARIZERS)}")
  return regularizers.REGULARIZERS[reg_cfg.name](config, run)
