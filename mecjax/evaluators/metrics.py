"""Classification metrics of the evaluation protocols, as pure numpy functions of scores.

Computed on the host, in float64, once per evaluation: the eval split's scores are small
(N x C) and exact figures matter more here than speed. Which metric a data set reports
follows the transfer literature (Kornblith et al. 2019, used by the MEC appendix): top-1 for
most, mean-per-class accuracy for FGVC-Aircraft, Oxford-IIIT Pets, Caltech-101 and Oxford
Flowers-102, and the 11-point mAP of the VOC2007 devkit for the multi-label VOC2007.
"""

from __future__ import annotations

import numpy as np

from mecjax.configlib import ConfigError

METRICS = ("top1", "mean_per_class", "map11")


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among their ``k`` highest scores.

  ``acc = mean_i [ y_i in the k largest of s_i ]``; equal scores rank the lower class index
  first (a stable sort of ``-scores``).

  Args:
    scores: (N, C) logits or probabilities.
    labels: (N,) ints in [0, C).
  """
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
  k = min(k, scores.shape[1])
  top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1))) if len(labels) else 0.0


def mean_per_class_accuracy(scores: np.ndarray, labels: np.ndarray,
                            num_classes: int | None = None) -> float:
  """Mean over the classes present in ``labels`` of each class's top-1 accuracy (recall).

  ``acc = (1/|K|) sum_{c in K} #{i : y_i = c, argmax_j s_ij = c} / #{i : y_i = c}``, K the
  classes with at least one row (sklearn's ``balanced_accuracy_score``).

  Args:
    scores: (N, C); labels: (N,) ints; num_classes: C (default scores.shape[1]).
  """
  scores, labels = np.asarray(scores), np.asarray(labels)
  num_classes = num_classes or scores.shape[1]
  predicted = np.argmax(scores, axis=1)
  totals = np.bincount(labels, minlength=num_classes)
  hits = np.bincount(labels[predicted == labels], minlength=num_classes)
  present = totals > 0
  return float(np.mean(hits[present] / totals[present])) if present.any() else 0.0


def average_precision_11(scores: np.ndarray, targets: np.ndarray) -> float:
  """The VOC2007 devkit's 11-point interpolated average precision of one class.

  Rank rows by descending score; precision p(r) and recall r along the ranking;
  ``AP = (1/11) sum_{t in 0, 0.1, ..., 1} max_{r >= t} p(r)`` (0 where no recall reaches t).

  Args:
    scores: (N,) scores of the class; targets: (N,) 1 where the class is present, else 0.
  """
  scores, targets = np.asarray(scores, np.float64), np.asarray(targets) > 0
  positives = int(targets.sum())
  if positives == 0:
    return 0.0
  order = np.argsort(-scores, kind="stable")
  hits = targets[order]
  tp = np.cumsum(hits)
  precision = tp / np.arange(1, len(hits) + 1)
  recall = tp / positives
  ap = 0.0
  for t in np.linspace(0.0, 1.0, 11):
    reached = recall >= t - 1e-12
    ap += precision[reached].max() if reached.any() else 0.0
  return ap / 11


def map_11(scores: np.ndarray, targets: np.ndarray) -> float:
  """Mean over classes with a positive row of ``average_precision_11``.

  Args:
    scores: (N, C); targets: (N, C) multi-hot labels.
  """
  scores, targets = np.asarray(scores), np.asarray(targets)
  aps = [average_precision_11(scores[:, c], targets[:, c]) for c in range(scores.shape[1])
         if targets[:, c].any()]
  return float(np.mean(aps)) if aps else 0.0


def classification_metrics(scores: np.ndarray, labels: np.ndarray, prefix: str,
                           metric: str = "top1", multi_label: bool = False) -> dict:
  """The row an evaluation logs, under ``prefix``: ``{prefix}_top1`` and ``{prefix}_top5``
  for single-label data, plus ``{prefix}_mean_per_class`` or ``{prefix}_map11`` when
  ``metric`` names it (multi-label data: ``map11`` only)."""
  if metric not in METRICS:
    raise ConfigError(f"config.linear.metric={metric!r}: expected one of {list(METRICS)}")
  if multi_label:
    if metric != "map11":
      raise ConfigError(f"config.linear.metric={metric!r} with config.linear.multi_label: "
                        "multi-label data is scored by 'map11'")
    return {f"{prefix}_map11": map_11(scores, labels)}
  if metric == "map11":
    raise ConfigError("config.linear.metric='map11' needs config.linear.multi_label=True")
  row = {f"{prefix}_top1": top_k_accuracy(scores, labels, 1),
         f"{prefix}_top5": top_k_accuracy(scores, labels, 5)}
  if metric == "mean_per_class":
    row[f"{prefix}_mean_per_class"] = mean_per_class_accuracy(scores, labels)
  return row
