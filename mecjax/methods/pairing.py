"""Which views a method compares, as lists of view-index pairs.

Views are numbered as the recipe returns them: the ``num_global`` global views first (two),
then the local ones (``config.aug.num_local``). Only global views are targets: a local view
sees a small part of the image, so it is asked to predict a global view, never another local
one (SwAV's and DINO's multi-crop rule). With no local views both rules give the two-view
pairings the methods had before multi-crop, in the same order.
"""

from __future__ import annotations


def to_globals(num_views: int, num_global: int = 2) -> list[tuple[int, int]]:
  """Ordered ``(g, v)``: every view ``v`` against each global view ``g`` other than itself.

  For asymmetric methods (a target side and a predicting side): ``g`` gives the target,
  ``v`` the prediction. ``num_global (num_views - 1)`` pairs; two views give
  ``[(0, 1), (1, 0)]``, the crossed pairing; each local view gets one pair per global view.
  """
  return [(g, v) for g in range(num_global) for v in range(num_views) if v != g]


def with_globals(num_views: int, num_global: int = 2) -> list[tuple[int, int]]:
  """Unordered ``(a, b)``, ``a < b``, ``a`` global: each pair of distinct views with at least
  one global view, for symmetric losses (the two sides play the same part). Two views give
  ``[(0, 1)]``; each local view gets one pair per global view."""
  return [(a, b) for a in range(num_global) for b in range(a + 1, num_views)]
