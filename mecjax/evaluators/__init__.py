"""Evaluators of a pre-trained encoder: kNN monitor, online linear probe."""

from mecjax.evaluators import probe
from mecjax.evaluators.knn import knn_top1

__all__ = ["knn_top1", "probe"]
