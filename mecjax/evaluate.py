r"""Evaluations of a finished (or running) mecjax run directory, from the command line:

  python -m mecjax.evaluate knn --workdir=RUN [--k=K] [--temperature=T] [--bn=eval|batch]
  python -m mecjax.evaluate e2mc --workdir=RUN [--examples=2048] [--seed=0]
  python -m mecjax.evaluate plots --workdir=RUN [--examples=2000] [--seed=0] [--perplexity=30]
      [--tsne-iters=1000] [--segment=0]
  python -m mecjax.evaluate curves --runs RUN [RUN ...] [--labels L ...] [--metric=knn_top1]
      [--x=epoch|step] --out=FIG.png

``knn``: the weighted kNN of the training monitor (cosine similarity of L2-normalised backbone
features, each of the k nearest train images votes exp(sim / T); k and T default to the
run's ``config.knn``, 200 and 0.1 in the recipes) on RUN's latest checkpoint, with RUN's
data config and bank; prints and appends ``knn_top1`` (with k, T and the BN mode) to
RUN/metrics.jsonl under the checkpoint's step.

``e2mc``: the pictures E2MC's users look at, as PNG files in RUN/plots/, comparing the
weights the run started from (``config.init``) with its latest checkpoint, on the first
``--examples`` images of the eval split, un-augmented, BN in eval mode:
- ``e2mc_dims.png``: a random pair of embedding dimensions after the E2MC squash, before vs
  after (E2MC paper Fig. 2 / D.1): spread over the unit square is what E2MC aims for;
- ``e2mc_neighbours.png``: histograms of the Euclidean distances of each L2-normalised
  embedding to its 1st and 100th nearest neighbour, before vs after (paper Fig. 4).
The embedding is the tensor E2MC acts on: the projector output, before any normalisation.
Also prints E2MC's two terms of that embedding on those images, before and after (H, the
mean marginal m-spacings entropy, and Cov, both of one view, with the run's squash and eps),
and appends them to RUN/metrics.jsonl under the checkpoint's step (``eval_entropy``,
``eval_cov``; ``eval_entropy_init``, ``eval_cov_init`` for the weights it started from): the
same figures for E2MC, the continued ablation and the other criteria.

``plots``: PNG files in RUN/plots/ of RUN's latest checkpoint, from a class-balanced
``--examples`` images of the eval split, BN in eval mode (pictures from ``mecjax.plots``):
- ``tsne.png``: t-SNE of the encoder features, coloured by class (MEC appendix B);
- ``spectrum.png``: sorted singular values of the centred embedding (projector output) and
  encoder-feature matrices over those images, normalised, log scale, effective ranks printed
  (dimensional collapse shows as a cliff);
- ``curves.png``: loss, ``knn_top1``, ``probe_top1`` against step/epoch from metrics.jsonl;
- ``music_p.png`` (MUSIC runs): the joint distribution ``P`` of two augmented views' segment
  symbols (``losses.music.music_joint``), segment ``--segment``'s block and the mean block.
Prints the paths written; RUN without a config.json stops with one line (exit status 2).

``curves``: one metric of several runs in one PNG, a line per run, against the epoch (E2MC
paper Fig. 3: kNN or probe accuracy over the continued epochs of E2MC, the "continued"
ablation and each ablation criterion). Reads only each RUN's metrics.jsonl; labels default
to the run directories' names. A run without metrics.jsonl or without the metric stops with
one line (exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mecjax import entry  # noqa: F401  (default XLA flags, before JAX starts its backend)

log = logging.getLogger("mecjax")


# ------------------------------------------------------------------ loading a run

class LoadedRun:
  """A run directory's config, method, data recipe and latest weights (host arrays)."""

  def __init__(self, workdir: str, step: int | None = None):
    import jax
    from mecjax import checkpoint as ckpt_lib
    from mecjax import configlib, data as data_lib, methods
    self.workdir = os.path.abspath(workdir)
    self.config = configlib.load_run(self.workdir)
    state = ckpt_lib.read_state(self.workdir, step)
    self.step = int(state["step"])
    self.params, self.model_state = state["params"], state["model_state"]
    cfg = self.config
    run_info = methods.RunInfo(cfg.batch_size, 1, max(self.step, 1))
    self.method = methods.get_method(cfg, run_info)
    self.recipe = data_lib.get_recipe(cfg.aug, cfg.data.image_size, cfg.seed)
    self._jax = jax

  def initial_weights(self):
    """(params, model_state) the run started from: a fresh initialisation with
    ``config.init`` merged in, exactly as the train loop builds it."""
    import jax
    import numpy as np
    from mecjax import initialize
    if not initialize.requested(self.config):
      raise SystemExit(f"mecjax: error: {self.workdir} did not start from trained weights "
                       "(config.init is empty): nothing to compare against")
    size = self.config.data.image_size
    params, model_state = self.method.init(jax.random.key(self.config.seed),
                                           (2, size, size, 3))
    params = jax.tree.map(np.asarray, params)
    return initialize.initialize(self.config, self.method, params, model_state)

  def load_split(self, split: str, max_examples: int | None):
    from mecjax import data as data_lib
    return data_lib.load_config_split(self.config.data, split, max_examples)

  def outputs(self, params, model_state, source, key: str, train: bool = False):
    """``key`` ('features' or 'embedding') of every image of ``source``, eval-mode BN unless
    ``train``; (array, labels) on the host, padding dropped."""
    import jax
    from mecjax import parallel
    from mecjax.evaluators import common
    from mecjax.methods.base import SSLNet
    mesh = parallel.make_mesh()
    net, recipe = self.method.net, self.recipe

    @jax.jit
    def forward(p, bs, images):
      x = recipe.eval_view(images)
      variables = {"params": p, "batch_stats": bs}
      method = SSLNet.features if key == "features" else SSLNet.embed
      out = net.apply(variables, x, train=train, method=method,
                      mutable=["batch_stats"] if train else False)
      if train:   # batch statistics: the updated ones are not wanted
        out = out[0]
      return out if key == "features" else out[key]

    return common.batch_mapper(self.config, recipe, mesh)(
        forward, (params, model_state["batch_stats"]), source)


# ------------------------------------------------------------------ knn

def knn(args) -> dict:
  import jax.numpy as jnp
  from mecjax import evaluators, metric_writers
  run = LoadedRun(args.workdir, args.step)
  cfg = run.config
  from mecjax.data import sources
  train = args.bn == "batch"
  k = cfg.knn.k if args.k is None else args.k
  temperature = cfg.knn.temperature if args.temperature is None else args.temperature
  # The monitor's bank and queries: the run's splits, the bank capped as the run capped it.
  bank = sources.subset(run.load_split(cfg.data.train_split, cfg.data.max_train_examples),
                        cfg.knn.max_train_examples)
  queries = run.load_split(cfg.data.eval_split, cfg.data.max_eval_examples)
  if not len(bank.classes):
    raise SystemExit(f"mecjax: error: split {cfg.data.train_split!r} has no labels: kNN "
                     "needs a labelled split")
  bank_f, bank_l = run.outputs(run.params, run.model_state, bank, "features", train)
  query_f, query_l = run.outputs(run.params, run.model_state, queries, "features", train)
  top1 = float(evaluators.knn_top1(
      jnp.asarray(bank_f), jnp.asarray(bank_l), jnp.ones(len(bank_l), bool),
      jnp.asarray(query_f), jnp.asarray(query_l), jnp.ones(len(query_l), bool),
      num_classes=len(bank.classes), k=k, temperature=temperature))
  row = {"knn_top1": top1, "knn_k": k, "knn_temperature": temperature,
         "knn_bn_batch_mode": float(train)}
  print(f"kNN top-1 {100 * top1:.2f}% of {len(query_l)} {cfg.data.eval_split!r} images "
        f"(bank: {len(bank_l)} {cfg.data.train_split!r} images; k={k}, "
        f"T={temperature}, BN in {args.bn} mode) at step {run.step} of {run.workdir}")
  writer = metric_writers.MetricWriter(run.workdir, enabled=True)
  writer.write(run.step, row)
  writer.close()
  return row


# ------------------------------------------------------------------ e2mc pictures

def e2mc_pictures(args) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import jax.numpy as jnp
  import numpy as np
  from mecjax import metric_writers
  from mecjax.losses.entropy import TRANSFORMS, e2mc_terms, squash

  run = LoadedRun(args.workdir, args.step)
  cfg = run.config
  transform = cfg.e2mc.transform if cfg.e2mc.transform in TRANSFORMS else "sigmoid"
  source = run.load_split(cfg.data.eval_split, args.examples)
  before_p, before_s = run.initial_weights()
  emb = {"before": run.outputs(before_p, before_s, source, "embedding")[0],
         "after": run.outputs(run.params, run.model_state, source, "embedding")[0]}
  squashed = {k: np.asarray(squash(np.asarray(v, np.float32), transform))
              for k, v in emb.items()}
  # E2MC's two terms on these images, the same way for every run of a comparison (E2MC, the
  # continued ablation, the other criteria): H (mean marginal m-spacings entropy) and Cov of
  # one view, with the run's squash and eps. Training logs them only for E2MC runs, and on
  # augmented batches.
  eps = float(cfg.e2mc.eps)
  terms = {k: e2mc_terms(jnp.asarray(v, jnp.float32), jnp.asarray(v, jnp.float32),
                         transform=transform, eps=eps) for k, v in emb.items()}
  row = {"eval_entropy": float(terms["after"]["entropy"]),
         "eval_cov": float(terms["after"]["cov"]) / 2,
         "eval_entropy_init": float(terms["before"]["entropy"]),
         "eval_cov_init": float(terms["before"]["cov"]) / 2}
  print(f"E2MC terms of the embedding on {len(source)} {cfg.data.eval_split!r} images "
        f"({transform} squash, eps {eps:g}), start -> step {run.step}: "
        f"H {row['eval_entropy_init']:.4f} -> {row['eval_entropy']:.4f}, "
        f"Cov {row['eval_cov_init']:.5f} -> {row['eval_cov']:.5f}")
  writer = metric_writers.MetricWriter(run.workdir, enabled=True)
  writer.write(run.step, row)
  writer.close()
  out_dir = os.path.join(run.workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  what = "E2MC" if cfg.regularizer.name == "e2mc" else "continued (no E2MC)"
  title = f"{cfg.method} + {what}, step {run.step}"

  rng = np.random.default_rng(args.seed)
  i, j = rng.choice(emb["after"].shape[1], size=2, replace=False)
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), sharex=True, sharey=True)
  for ax, name in zip(axes, ("before", "after")):
    u = squashed[name]
    ax.scatter(u[:, i], u[:, j], s=3, alpha=0.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_title(f"{name}")
    ax.set_xlabel(f"{transform}(z[{i}])")
  axes[0].set_ylabel(f"{transform}(z[{j}])")
  fig.suptitle(f"{title}: two random embedding dimensions after the E2MC squash, "
               f"{len(u)} {cfg.data.eval_split} images", fontsize=9)
  paths = [os.path.join(out_dir, "e2mc_dims.png")]
  fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
  plt.close(fig)

  k_far = min(100, len(source) - 1)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
  for name, style in (("before", dict(alpha=0.5)), ("after", dict(alpha=0.5))):
    d = _neighbour_distances(emb[name], (1, k_far))
    for ax, k in zip(axes, (1, k_far)):
      ax.hist(d[k], bins=50, label=name, **style)
  for ax, k in zip(axes, (1, k_far)):
    ax.set_title(f"distance to the {_ordinal(k)} nearest neighbour")
    ax.set_xlabel("Euclidean distance of L2-normalised embeddings")
    ax.legend()
  axes[0].set_ylabel("images")
  fig.suptitle(f"{title}: {len(source)} {cfg.data.eval_split} images", fontsize=9)
  paths.append(os.path.join(out_dir, "e2mc_neighbours.png"))
  fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
  plt.close(fig)
  for p in paths:
    print(p)
  return paths


def _neighbour_distances(x, ks) -> dict:
  """{k: (N,) distance of each row to its k-th nearest other row}, rows L2-normalised."""
  import numpy as np
  x = np.asarray(x, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sq = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
  np.fill_diagonal(sq, np.inf)
  part = np.sort(sq, axis=1)
  return {k: np.sqrt(part[:, k - 1]) for k in ks}


def _ordinal(k: int) -> str:
  return f"{k}{'st' if k % 10 == 1 and k != 11 else 'nd' if k % 10 == 2 else 'th'}"


# ------------------------------------------------------------------ plots

def plots(args) -> list[str]:
  import numpy as np
  from mecjax import metric_writers, plots as plots_lib
  from mecjax.losses.music import music_joint

  run = LoadedRun(args.workdir, args.step)   # not a run directory: ConfigError, one line
  cfg = run.config
  source = run.load_split(cfg.data.eval_split, args.examples)
  out_dir = os.path.join(run.workdir, "plots")
  title = f"{cfg.method}, {os.path.basename(run.workdir)}, checkpoint step {run.step}"
  where = f"{len(source)} {cfg.data.eval_split!r} images"
  music = cfg.method == "music"
  out = _plot_outputs(run, source, args.seed, views=music)
  features, embedding, labels = out["features"], out["embedding"], out["label"]
  paths = []

  if len(source.classes) and (labels >= 0).all():
    fig = _user_error(plots_lib.tsne_figure, features, labels, source.classes,
                      title=f"{title}, {where}", perplexity=args.perplexity, seed=args.seed,
                      max_iter=args.tsne_iters)
    paths.append(plots_lib.save(fig, os.path.join(out_dir, "tsne.png")))
  else:
    print(f"no t-SNE: split {cfg.data.eval_split!r} has no labels to colour by")

  fig = plots_lib.spectrum_figure(
      {"embedding (projector output)": embedding, "encoder features": features},
      title=f"{title}, {where}")
  paths.append(plots_lib.save(fig, os.path.join(out_dir, "spectrum.png")))

  metrics_path = os.path.join(run.workdir, "metrics.jsonl")
  rows = metric_writers.read_metrics(run.workdir) if os.path.isfile(metrics_path) else []
  fig = plots_lib.curves_figure(rows, title=title)
  paths.append(plots_lib.save(fig, os.path.join(out_dir, "curves.png")))

  if music:
    p = np.asarray(music_joint(out["view1"], out["view2"], segment_size=cfg.music.segment_size,
                               temperature=cfg.music.temperature))
    fig = _user_error(plots_lib.music_joint_figure, p, segment=args.segment,
                      title=f"{title}, two augmented views of {where}")
    paths.append(plots_lib.save(fig, os.path.join(out_dir, "music_p.png")))
  for path in paths:
    print(path)
  return paths


def curves(args) -> str:
  from mecjax import configlib, metric_writers, plots as plots_lib
  labels = args.labels or [os.path.basename(os.path.normpath(r)) for r in args.runs]
  if len(labels) != len(args.runs):
    raise configlib.ConfigError(f"--labels: {len(labels)} given for {len(args.runs)} --runs")
  if len(set(labels)) != len(labels):
    raise configlib.ConfigError(f"--labels / run names repeat: {labels}; pass --labels")
  runs = {}
  for label, workdir in zip(labels, args.runs):
    if not os.path.isfile(os.path.join(workdir, "metrics.jsonl")):
      raise configlib.ConfigError(f"{workdir!r} has no metrics.jsonl: not a mecjax run "
                                  "directory")
    runs[label] = metric_writers.read_metrics(workdir)
  title = args.title or f"{args.metric} per run"
  try:
    fig = plots_lib.compare_figure(runs, metric=args.metric, title=title, x=args.x)
  except ValueError as e:   # a run without the metric: one line, exit status 2
    raise configlib.ConfigError(str(e)) from None
  path = plots_lib.save(fig, args.out)
  print(path)
  return path


def _user_error(draw, *args, **kwargs):
  """``draw(...)``; its ValueErrors (an option out of range for these data) as one line."""
  try:
    return draw(*args, **kwargs)
  except ValueError as e:
    raise SystemExit(f"mecjax: error: {e}") from None


def _plot_outputs(run, source, seed: int, views: bool) -> dict:
  """One pass over ``source``, BN in eval mode: ``features`` (encoder) and ``embedding``
  (projector output) of each un-augmented image, ``label``, and with ``views`` the
  embeddings ``view1``, ``view2`` of two augmented views (the run's training augmentation
  keyed by ``seed``; MUSIC's ``P`` is a distribution over pairs of views). Recipes that crop
  on the host (ImageNet) start both views from the eval centre crop; the device-side
  augmentations still differ per view. One compiled forward for all of them."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from mecjax import data as data_lib, parallel
  from mecjax.methods.base import SSLNet
  mesh = parallel.make_mesh()
  net, recipe = run.method.net, run.recipe
  host_crops = recipe.host_transform() is not None
  key = jax.random.key(seed)

  @jax.jit
  def forward(p, bs, images, index):
    def embed(x):
      return net.apply({"params": p, "batch_stats": bs}, x, train=False, method=SSLNet.embed)
    out = embed(recipe.eval_view(images))
    if views:
      crops = jnp.repeat(images[:, None], recipe.num_views, axis=1) if host_crops else images
      v1, v2 = recipe.views(crops, index, 0, key)[:2]
      out["view1"], out["view2"] = embed(v1)["embedding"], embed(v2)["embedding"]
    return out

  parts, start = {}, 0
  for batch in data_lib.eval_batches(source, global_batch=run.config.eval_batch_size,
                                     mesh=mesh, transform=recipe.eval_transform(),
                                     threads=run.config.data.host_threads):
    rows = batch["image"].shape[0]
    index = jnp.arange(start, start + rows, dtype=jnp.int32)
    start += rows
    out = forward(run.params, run.model_state["batch_stats"], batch["image"], index)
    out.update(label=batch["label"], valid=batch["valid"])
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(jax.device_get(v)))
  keep = np.concatenate(parts.pop("valid"))
  return {k: np.concatenate(v)[keep] for k, v in parts.items()}


# ------------------------------------------------------------------ command line

def parse(argv=None):
  p = argparse.ArgumentParser(prog="python -m mecjax.evaluate", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  k = sub.add_parser("knn", help="weighted kNN top-1 of a run's latest checkpoint")
  k.add_argument("--workdir", required=True)
  k.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  k.add_argument("--k", type=int, default=None, help="default: the run's config.knn.k")
  k.add_argument("--temperature", type=float, default=None,
                 help="default: the run's config.knn.temperature")
  k.add_argument("--bn", choices=("eval", "batch"), default="eval",
                 help="BN with running statistics (eval) or each batch's own")
  e = sub.add_parser("e2mc", help="E2MC pictures (PNG) into RUN/plots/")
  e.add_argument("--workdir", required=True)
  e.add_argument("--step", type=int, default=None)
  e.add_argument("--examples", type=int, default=2048, help="eval images used")
  e.add_argument("--seed", type=int, default=0, help="picks the pair of dimensions")
  g = sub.add_parser("plots", help="t-SNE, spectrum, training curves (and MUSIC's P) as PNG "
                     "into RUN/plots/")
  g.add_argument("--workdir", required=True)
  g.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  g.add_argument("--examples", type=int, default=2000,
                 help="class-balanced eval images for t-SNE, spectrum and P")
  g.add_argument("--seed", type=int, default=0, help="t-SNE and the views' augmentation")
  g.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
  g.add_argument("--tsne-iters", type=int, default=1000,
                 help="t-SNE optimisation iterations (at least 250)")
  g.add_argument("--segment", type=int, default=0, help="MUSIC segment drawn beside the mean")
  c = sub.add_parser("curves", help="one metric of several runs against the epoch, one PNG "
                     "(E2MC paper Fig. 3)")
  c.add_argument("--runs", nargs="+", required=True, help="run directories")
  c.add_argument("--labels", nargs="+", default=None, help="legend labels, one per run")
  c.add_argument("--metric", default="knn_top1")
  c.add_argument("--x", choices=("epoch", "step"), default="epoch")
  c.add_argument("--title", default=None)
  c.add_argument("--out", required=True, help="PNG path")
  return p.parse_args(argv)


def main(argv=None) -> int:
  from mecjax import checkpoint, configlib
  from mecjax.data.sources import DataError
  from mecjax.entry import say, setup_logging
  args = parse(argv)
  setup_logging()
  try:
    {"knn": knn, "e2mc": e2mc_pictures, "plots": plots,
     "curves": curves}[args.command](args)
  except (configlib.ConfigError, DataError, checkpoint.CheckpointMismatch) as e:
    say(f"mecjax: error: {e}")
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
