"""Evaluators of a pre-trained encoder. During pre-training, by type from ``config.evals``
(``registry``): ``knn`` (weighted kNN monitor, ``knn_top1``) and ``probe`` (the online
linear probe's accuracy, ``probe_top1``; its training is part of the train step), each
built from a predict function and its data, ``run(state)`` yielding ``(key, value)``;
``common`` holds the one gather over eval batches. The offline protocols, run by
``mecjax.main`` as ``config.task`` says: ``linear`` (offline linear probe), ``finetune``
(semi-supervised fine-tuning), sharing ``downstream`` (encoder from config.init, data, the
classifier run handed to ``mecjax.loop``) and ``metrics``. Those load encoders and run the
loop, so they are not imported here."""

from mecjax.evaluators import common, probe, registry
from mecjax.evaluators.knn import knn_top1

__all__ = ["common", "knn_top1", "probe", "registry"]
