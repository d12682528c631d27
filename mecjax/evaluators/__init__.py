"""Evaluators of a pre-trained encoder: kNN monitor, online linear probe (used during
pre-training); the offline protocols, run by ``mecjax.main`` as ``config.task`` says:
``linear`` (offline linear probe), ``finetune`` (semi-supervised fine-tuning), sharing
``downstream`` (encoder from config.init, data, the classifier loop) and ``metrics``.
Those import ``mecjax.train``, so they are not imported here."""

from mecjax.evaluators import probe
from mecjax.evaluators.knn import knn_top1

__all__ = ["knn_top1", "probe"]
