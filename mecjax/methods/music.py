"""MUSIC: a symmetric twin network (no predictor, EMA or stop-gradient) trained with the
multi-segment entropy objective of ``losses.music_terms`` on the projector outputs of the
two views; the joint distribution ``P`` is taken over the global batch.

Logged: ``music_diagonal``, ``music_off_diagonal``, ``music_invariance`` (the unweighted
terms, ``loss = diagonal + off_diagonal + invariance_weight * invariance``) and
``music_bound`` = ``-3 ln D_S``, the value at the ideal code (the loss stays above it).

Multi-crop: refused (``config.aug.num_local > 0`` stops with a ConfigError): the objective
is the joint distribution of one pair of twin views, its bound and terms are stated for that
pair, and the MUSIC recipes use two views with no multi-crop result to reproduce.
"""

from __future__ import annotations

import math

from mecjax import losses
from mecjax.configvalues import ConfigError
from mecjax.methods.base import Method


class MUSIC(Method):
  name = "music"
  refuses_local_views = ("its objective is the joint distribution of one pair of twin views; "
                         "the MUSIC recipes have no multi-crop")

  @staticmethod
  def defaults():
    # config.music: D_S (the projector width must split into >= 2 segments of it), the
    # softmax temperature of each segment, the weight of the invariance term.
    return dict(segment_size=32, temperature=1.0, invariance_weight=1.0)

  def __init__(self, config, run):
    super().__init__(config, run)
    cfg = config.music
    width = config.projector.out_dim
    if cfg.segment_size < 2 or width % cfg.segment_size or width // cfg.segment_size < 2:
      raise ConfigError(f"config.music.segment_size={cfg.segment_size} must divide "
                        f"config.projector.out_dim={width} into at least two segments")
    if config.predictor.out_dim:
      raise ConfigError("MUSIC has no predictor: set config.predictor.out_dim=0")

  def objective(self, params, state, target, views, step):
    self.check_views(views)
    cfg = self.config.music
    online, batch_stats = self.forward_views(params, state["batch_stats"], views)
    z1, z2 = (o["embedding"] for o in online)
    terms = losses.music_terms(z1, z2, segment_size=cfg.segment_size,
                               temperature=cfg.temperature,
                               invariance_weight=cfg.invariance_weight)
    metrics = {"music_diagonal": terms["diagonal"], "music_off_diagonal": terms["off_diagonal"],
               "music_invariance": terms["invariance"],
               "music_bound": -3.0 * math.log(cfg.segment_size)}
    return terms["loss"], self.output(metrics, {"batch_stats": batch_stats}, online), [(z1, z2)]
