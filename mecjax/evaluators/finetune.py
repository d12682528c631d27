r"""Semi-supervised fine-tuning (``config.task = "finetune"``):

  python -m mecjax.main --config=configs/semisup_cifar10.py:10pct --workdir=DIR \
      --config.init.workdir=RUN [--config.data.path=...]

The MEC appendix's protocol (SimCLR's / BYOL's): the encoder of ``config.init`` and a new
linear head (``downstream.Classifier``: pooled features -> Linear, N(0, 0.01) weights) are
trained whole on a labelled subset with softmax cross-entropy: SGD momentum 0.9, lr 0.05
at batch 1024, weight decay 0, cosine, 50 epochs; BN in training mode (batch statistics,
running ones updated) during training and in eval mode for the evaluation. Each step sees
one random-resized crop + flip of each image (``downstream.train_view``). Subsets: on
ImageNet SimCLR's 1% / 10% lists through tfds ``imagenet2012_subset/1pct`` | ``/10pct``; on
CIFAR-10 ``data.max_train_examples`` picks a deterministic class-balanced subset (the
first images of each class in file order, ``sources.balanced_subset``). Logs
``finetune_loss``, ``finetune_train_top1`` while training and ``finetune_top1`` /
``finetune_top5`` on ``data.eval_split`` at the end.
"""

from __future__ import annotations

import jax
import numpy as np

from mecjax import data as data_lib
from mecjax import models
from mecjax import parallel
from mecjax.evaluators import downstream

PREFIX = "finetune"


def run(config, workdir: str) -> dict:
  """Fine-tune (or resume) in ``workdir``; returns the last metrics row."""
  if config.linear.multi_label:
    from mecjax.configlib import ConfigError
    raise ConfigError("config.linear.multi_label: fine-tuning takes single-label data")
  workdir, source = downstream.prepare(config, workdir, "finetune")
  mesh = parallel.make_mesh()
  dcfg = config.data
  recipe = data_lib.get_recipe(config.aug, dcfg.image_size, config.seed)
  train_src = downstream.load_split(config, dcfg.train_split, dcfg.max_train_examples)
  eval_src = downstream.load_split(config, dcfg.eval_split, dcfg.max_eval_examples)
  num_outputs = len(train_src.classes)
  net = downstream.Classifier(encoder=models.get_encoder(config.model),
                              num_outputs=num_outputs)
  size = dcfg.image_size

  def init(key):
    variables = net.init(key, np.zeros((2, size, size, 3), np.float32), train=False)
    return variables["params"], variables["batch_stats"]

  def initial(params, batch_stats):
    """The encoder's trained weights and statistics into a fresh classifier."""
    _, loaded = downstream.load_encoder(config, source)
    return ({**params, "encoder": loaded["params"]},
            {**batch_stats, "encoder": loaded["batch_stats"]})

  def logits(params, batch_stats, frozen, batch, step, key, train):
    views = downstream.train_view(recipe, batch["image"], batch["index"], step, key)
    out, mutated = net.apply({"params": params, "batch_stats": batch_stats}, views,
                             train=True, mutable=["batch_stats"])
    return out, mutated["batch_stats"]

  predict = jax.jit(lambda p, bs, images: net.apply({"params": p, "batch_stats": bs},
                                                    recipe.eval_view(images), train=False))

  def evaluate(state):
    return downstream.map_eval_batches(predict, (state.params, state.batch_stats), eval_src,
                                       config, recipe, mesh)

  make_input = lambda total: data_lib.TrainInput(
      train_src, global_batch=config.batch_size, seed=config.seed, mesh=mesh,
      total_steps=total, host_transform=recipe.host_transform(), threads=dcfg.host_threads,
      prefetch=dcfg.prefetch_batches, workers=dcfg.host_workers)
  meta = downstream.base_meta(config, "finetune", source, num_outputs)
  meta["train_examples"] = len(train_src)
  return downstream.fit(config, workdir, downstream.Classification(
      prefix=PREFIX, init=init, initial=initial if source["kind"] != "random" else None,
      logits=logits, frozen=None, make_input=make_input, train_size=len(train_src),
      evaluate=evaluate, meta=meta))
