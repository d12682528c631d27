"""Barlow Twins and VICReg: symmetric twin networks whose losses act on the statistics of the
global batch of projector ("expander") outputs; no predictor, no EMA, no stop-gradient.

Barlow Twins: ``scale * barlow_twins_loss(z1, z2, lambd)`` (official scale 1; solo-learn's
CIFAR recipe scales by 0.1). VICReg: ``vicreg_terms`` with its weights; the three unweighted
terms are logged as ``vicreg_invariance``, ``vicreg_variance``, ``vicreg_covariance``.

Multi-crop: both refuse local views (``config.aug.num_local > 0`` stops with a ConfigError).
VICReg's authors report that they could not make multi-crop work with the VICReg criterion
on ResNet encoders (VICRegL, Bardes et al. 2022, section 3.2); Barlow Twins' criterion is of
the same kind (statistics of batch-standardised embeddings) and has no published multi-crop
recipe to reproduce, so neither gets a pairing rule of our own invention.
"""

from __future__ import annotations

from mecjax import losses
from mecjax.methods.base import Method


class BarlowTwins(Method):
  name = "barlow_twins"
  refuses_local_views = ("a batch-statistics criterion like VICReg's, with no published "
                         "multi-crop recipe")

  @staticmethod
  def defaults():
    # config.barlow_twins: lambd weighs the off-diagonal terms (official 0.0051); the loss
    # is multiplied by scale (official 1, solo-learn's CIFAR recipe 0.1).
    return dict(lambd=0.0051, scale=1.0)

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    cfg = self.config.barlow_twins
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    z1, z2 = (o["embedding"] for o in online)
    raw = losses.barlow_twins_loss(z1, z2, lambd=cfg.lambd)
    metrics = {"barlow_twins_unscaled": raw}
    return cfg.scale * raw, self.output(metrics, {"batch_stats": batch_stats}, online), \
        [(z1, z2)]


class VICReg(Method):
  name = "vicreg"
  refuses_local_views = ("its authors could not optimise the VICReg criterion with multi-crop "
                         "on ResNets, VICRegL section 3.2")

  @staticmethod
  def defaults():
    # config.vicreg: weights of the invariance, variance and covariance terms (official
    # 25 / 25 / 1).
    return dict(sim_weight=25.0, var_weight=25.0, cov_weight=1.0)

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    cfg = self.config.vicreg
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    z1, z2 = (o["embedding"] for o in online)
    terms = losses.vicreg_terms(z1, z2, sim_weight=cfg.sim_weight, var_weight=cfg.var_weight,
                                cov_weight=cfg.cov_weight)
    metrics = {f"vicreg_{k}": terms[k] for k in ("invariance", "variance", "covariance")}
    return terms["loss"], self.output(metrics, {"batch_stats": batch_stats}, online), \
        [(z1, z2)]
