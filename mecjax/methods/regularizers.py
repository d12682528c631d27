"""Additive regularisers on another method's embeddings (``config.regularizer``).

Each is called as ``regularizer(pairs, embeddings, step, local=...) -> (loss, metrics)``:
``pairs`` are the (a, b) pairs the method's objective names (with its stop-gradients; with
multi-crop they include the local views' pairs, by the method's own pairing rule),
``embeddings`` the online embeddings of its global views (projector output before any
normalisation, with gradient; local views never reach E2MC), ``local`` those of the local
views (only MMCR, "over all views", reads them).

``vc``, ``au``, ``mmcr``: the criteria of E2MC's ablation (``mecjax.losses.ablation``), each
in place of E2MC on the same continuation: VICReg's variance-covariance on the two global
views (``config.vc``), uniformity (+ optional alignment) on each global view's pairs
(``config.au``), MMCR's nuclear norm of the centroids of every view; their lambda is
``config.regularizer.weight`` (paper: VC 1 with mu/nu inside, AU 0.5, MMCR 0.005).

``mec``: the MEC loss of the official code on each pair the method names, averaged over the
pairs, with ``config.mec`` (eps_sq, order, objective, lamda_inv warm-up) as for MEC itself. The MEC paper
adds it to SimCLR (on the two projections) and SimSiam (on prediction vs stop-gradient
projection, the pairs of SimSiam's own loss); the pair's width ``d`` sets
``lamda_inv = m eps_sq / d``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mecjax.configvalues import ConfigError, duration
from mecjax import losses
from mecjax import optim
from mecjax.losses import ablation
from mecjax.losses.entropy import TRANSFORMS


def lamda_inv_schedule(mec_cfg, run, out_dim: int):
  """``lamda_inv = m eps_sq / d``, warmed up per step as the official MEC code does:
  ``np.linspace(factor x lamda_inv, lamda_inv, W)`` over the first W steps, then constant
  (MEC itself and the ``mec`` regulariser alike). A warm-up longer than the run is cut off
  where the run ends, as the official array is read only up to its last step."""
  base = run.global_batch * mec_cfg.eps_sq / out_dim
  warmup = duration(mec_cfg, "lamda_warmup", run.steps_per_epoch, default=0)
  return optim.linspace_warmup(mec_cfg.lamda_warmup_factor * base, base, warmup)


class Regularizer:
  """What the regularisers share: their own config block (``config.<name>``, as a method's:
  ``Method.defaults``; None: none, e.g. ``mec`` reads MEC's ``config.mec``)."""
  schedule_metrics = ()

  @staticmethod
  def defaults() -> dict | None:
    return None


class MecRegularizer(Regularizer):
  """``mean over pairs of mec_loss(a, b)`` and its logged figures."""
  schedule_metrics = ("lamda_inv",)

  def __init__(self, config, run):
    self.cfg, self.run = config.mec, run
    self._schedules = {}
    if self.cfg.adapt_bound is not None:
      raise ConfigError("config.mec.adapt_bound is for method 'mec' (it keeps the scale in "
                        "the method state); the mec regulariser takes a fixed schedule: unset it")
    if self.cfg.objective not in losses.mec.OBJECTIVES:
      raise ConfigError(f"config.mec.objective={self.cfg.objective!r}: expected one of "
                        f"{list(losses.mec.OBJECTIVES)}")

  def schedule(self, out_dim: int):
    if out_dim not in self._schedules:
      self._schedules[out_dim] = lamda_inv_schedule(self.cfg, self.run, out_dim)
    return self._schedules[out_dim]

  def __call__(self, pairs, embeddings, step, local=()):
    if not pairs:
      raise ValueError("the MEC regulariser needs at least one embedding pair")
    lamda_inv = self.schedule(pairs[0][0].shape[-1])(step)
    total = sum(losses.mec_objective(a, b, lamda_inv=lamda_inv, order=self.cfg.order,
                                     objective=self.cfg.objective)
                for a, b in pairs) / len(pairs)
    a, b = pairs[0]
    return total, {"loss": jax.lax.stop_gradient(total), "lamda_inv": jnp.asarray(lamda_inv),
                   "c_norm": losses.mec_spectral_norm(a, b, lamda_inv=lamda_inv)}


class E2mcRegularizer(Regularizer):
  """``e2mc``: E2MC's effective-entropy criterion on the online embeddings of the two global
  views (``config.e2mc``), with gradient into them: VICReg's raw expander output, SwAV's
  un-normalised head output, SimSiam's projector output (before the predictor), MEC's
  projector output (the tensors the official E2MC code regularises for each base). Logs
  ``entropy`` (the mean marginal entropy H, averaged over the views) and ``cov``
  (Cov1 + Cov2) separately."""

  @staticmethod
  def defaults():
    # config.e2mc: gamma (Cov1 + Cov2) - beta (H1 + H2) / 2 on the embeddings squashed by
    # `transform` (losses.entropy.TRANSFORMS); eps inside the m-spacings log.
    return dict(beta=1.0, gamma=1.0, transform="sigmoid", eps=1e-7)

  def __init__(self, config, run):
    self.cfg = config.e2mc
    if self.cfg.transform not in TRANSFORMS:
      raise ConfigError(f"config.e2mc.transform={self.cfg.transform!r}: expected one "
                        f"of {list(TRANSFORMS)}")

  def __call__(self, pairs, embeddings, step, local=()):
    if len(embeddings) < 2:
      raise ValueError(f"E2MC needs the embeddings of two views, got {len(embeddings)}")
    cfg = self.cfg
    loss, terms = losses.e2mc_loss(embeddings[0], embeddings[1], beta=cfg.beta,
                                   gamma=cfg.gamma, transform=cfg.transform, eps=cfg.eps)
    return loss, {"loss": jax.lax.stop_gradient(loss),
                  "entropy": jax.lax.stop_gradient(terms["entropy"]),
                  "cov": jax.lax.stop_gradient(terms["cov"])}


def _global_pair(embeddings, name):
  if len(embeddings) < 2:
    raise ValueError(f"{name} needs the embeddings of two global views, got {len(embeddings)}")
  return embeddings[:2]


class VcRegularizer(Regularizer):
  """``vc``: ``mu std + nu cov`` (``losses.vc_loss``) on the two global views' head outputs
  (L2-normalised first in the official ``hypersphere`` space); ``config.vc``."""

  @staticmethod
  def defaults():
    # config.vc: std_weight x VICReg's std hinge + cov_weight x its covariance, in the
    # "hypersphere" (L2-normalised, std target 1/sqrt(D)) or "projector" (raw, target 1) space.
    return dict(std_weight=0.1, cov_weight=0.001, space="hypersphere")

  def __init__(self, config, run):
    self.cfg = config.vc
    if self.cfg.space not in ablation.VC_SPACES:
      raise ConfigError(f"config.vc.space={self.cfg.space!r}: expected one of "
                        f"{list(ablation.VC_SPACES)}")

  def __call__(self, pairs, embeddings, step, local=()):
    loss, terms = losses.vc_loss(_global_pair(embeddings, "vc"), std_weight=self.cfg.std_weight,
                                 cov_weight=self.cfg.cov_weight, space=self.cfg.space)
    sg = jax.lax.stop_gradient
    return loss, {"loss": sg(loss), "std": sg(terms["std"]), "cov": sg(terms["cov"])}


class AuRegularizer(Regularizer):
  """``au``: uniformity over each global view's pairs, averaged over the two views, plus
  ``config.au.align_weight`` x their alignment (``losses.au_loss``); ``config.au``."""

  @staticmethod
  def defaults():
    # config.au: uniformity at temperature t over each view's pairs, + align_weight x
    # Wang & Isola's alignment (0 in the official ablation script).
    return dict(t=2.0, align_weight=0.0)

  def __init__(self, config, run):
    self.cfg = config.au

  def __call__(self, pairs, embeddings, step, local=()):
    loss, terms = losses.au_loss(_global_pair(embeddings, "au"), t=self.cfg.t,
                                 align_weight=self.cfg.align_weight)
    return loss, {"loss": jax.lax.stop_gradient(loss),
                  **{k: jax.lax.stop_gradient(v) for k, v in terms.items()}}


class MmcrRegularizer(Regularizer):
  """``mmcr``: minus the nuclear norm of the per-image centroids of every view, global and
  local (``losses.mmcr_loss``)."""

  def __init__(self, config, run):
    pass

  def __call__(self, pairs, embeddings, step, local=()):
    loss, terms = losses.mmcr_loss(list(embeddings) + list(local))
    return loss, {"loss": jax.lax.stop_gradient(loss),
                  "nuclear_norm": jax.lax.stop_gradient(terms["nuclear_norm"])}


REGULARIZERS = {"mec": MecRegularizer, "e2mc": E2mcRegularizer, "vc": VcRegularizer,
                "au": AuRegularizer, "mmcr": MmcrRegularizer}
