r"""Offline evaluation of a pre-trained encoder against its two floors, with timings.

  python benchmarks/bench_eval.py --data=../shared/data/cifar10-jpeg.tar.gz \
      --run=runs/mec_cifar10_cpu --workdir=/tmp/bench_eval [--step=N]

For (a) the run's checkpoint (latest, or --step), (b) a random initialisation of the same
encoder (the run's config.json, seed 0) and (c) standardised pixels (each image flattened
after per-channel standardisation with the run's mean / std, 3072 values at 32x32):
- the offline linear probe of ``configs/linear_cifar10.py`` (MEC recipe: BN(no affine,
  eps 1e-6) + Linear, SGD lr 0.03 x 4096/256, batch 4096, 100 epochs, cosine; cached
  un-augmented features), through ``mecjax.evaluators.linear``;
- the weighted kNN of the training monitor (k and T from the run's config, cosine, BN in
  eval mode) on the same cached features, the whole train split as the bank.
Prints one table row per encoder: top-1 of each, and the seconds taken by the features
(computing them once, shared by both evaluations), the probe (training + evaluation) and
the kNN. Writes only under --workdir (one probe run directory per encoder).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mecjax import entry  # noqa: E402,F401  (default XLA flags, before JAX starts)


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", required=True, help="CIFAR-10 folder or archive (data.path)")
  p.add_argument("--run", required=True, help="a mecjax pre-training run directory")
  p.add_argument("--workdir", required=True, help="where the probe runs are written")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  p.add_argument("--epochs", type=float, default=None, help="probe epochs (default 100)")
  p.add_argument("--only", default="trained,random-init,pixels",
                 help="comma-separated rows to compute (trained, random-init, pixels)")
  return p.parse_args(argv)


def probe_config(args, init: str | None):
  from mecjax import configlib
  c = configlib.load(os.path.join(os.path.dirname(__file__), "..", "configs",
                                  "linear_cifar10.py"))
  c.data.path = args.data
  if init:
    c.init.workdir = init
    c.init.step = args.step
  else:   # the run's encoder, randomly initialised (seed 0)
    c.init.required = False
    from mecjax.evaluators import downstream
    c.init.workdir = args.run
    downstream.adopt_run_config(c)
    c.init.workdir = None
  if args.epochs:
    c.total_epochs = args.epochs
  return c


def features_of(config, workdir):
  """(train, eval) cached features of the config's encoder, and the seconds they took."""
  import jax
  from mecjax import data as data_lib, parallel
  from mecjax.evaluators import downstream, linear
  t = time.time()
  workdir, source = downstream.prepare(config, workdir, "linear")
  recipe = data_lib.get_recipe(config.aug, config.data.image_size, config.seed)
  encoder, variables = downstream.load_encoder(config, source)
  load = lambda split, n: downstream.load_split(config, split, n)
  mesh = parallel.make_mesh()
  out = [linear.cached_features(workdir, config, source, split, None, load, encoder,
                                variables, recipe, mesh)
         for split in (config.data.train_split, config.data.eval_split)]
  jax.effects_barrier()
  return out, source, time.time() - t


def pixel_features(config, workdir):
  """Flattened per-channel standardised pixels of both splits (the recipe's eval view)."""
  import jax
  import numpy as np
  from mecjax import data as data_lib, parallel
  from mecjax.evaluators import downstream
  t = time.time()
  os.makedirs(workdir, exist_ok=True)
  recipe = data_lib.get_recipe(config.aug, config.data.image_size, config.seed)
  mesh = parallel.make_mesh()
  flat = jax.jit(lambda images: recipe.eval_view(images).reshape(images.shape[0], -1))
  out = []
  for split in (config.data.train_split, config.data.eval_split):
    src = downstream.load_split(config, split, None)
    x, y = downstream.map_eval_batches(flat, (), src, config, recipe, mesh)
    out.append((x.astype(np.float32), y, len(src.classes)))
  return out, time.time() - t


def knn(config, run_config, train, evaluation):
  import jax.numpy as jnp
  from mecjax import evaluators
  t = time.time()
  (bank, bank_y, classes), (queries, query_y, _) = train, evaluation
  top1 = float(evaluators.knn_top1(
      jnp.asarray(bank), jnp.asarray(bank_y), jnp.ones(len(bank_y), bool),
      jnp.asarray(queries), jnp.asarray(query_y), jnp.ones(len(query_y), bool),
      num_classes=classes, k=run_config.knn.k, temperature=run_config.knn.temperature))
  return top1, time.time() - t


def main(argv=None) -> int:
  args = parse(argv)
  from mecjax import configlib
  from mecjax.evaluators import linear
  from mecjax.entry import setup_logging
  setup_logging()
  run_config = configlib.load_run(args.run)
  results = []
  for name in [n for n in ("trained", "random-init", "pixels") if n in args.only.split(",")]:
    workdir = os.path.join(os.path.abspath(args.workdir), name)
    config = probe_config(args, args.run if name == "trained" else None)
    if name == "pixels":
      (train, evaluation), feat_s = pixel_features(config, workdir)
      meta = {"method": "linear", "task": "linear", "encoder": {"kind": "pixels"},
              "num_outputs": train[2]}
      what = f"{train[0].shape[1]} standardised pixels"
    else:
      (train, evaluation), source, feat_s = features_of(config, workdir)
      meta = dict(linear.downstream.base_meta(config, "linear", source, train[2]),
                  cache_features=True)
      what = (f"step {source['step']} of {args.run}" if name == "trained" else
              f"{config.model.name} width {config.model.width}, seed {config.seed}")
    t = time.time()
    row = linear.feature_probe(config, workdir, train[:2], evaluation[:2], train[2], meta)
    probe_s = time.time() - t
    knn_top1, knn_s = knn(config, run_config, train, evaluation)
    results.append((name, what, row["linear_top1"], row.get("linear_top5"), knn_top1,
                    feat_s, probe_s, knn_s, train[0].shape))
  print("\n| encoder | what | linear top-1 | linear top-5 | kNN top-1 | features s | "
        "probe s | kNN s |")
  print("|---|---|---|---|---|---|---|---|")
  for name, what, top1, top5, k1, fs, ps, ks, shape in results:
    print(f"| {name} | {what} ({shape[0]} x {shape[1]}) | {100 * top1:.2f} | "
          f"{100 * top5:.2f} | {100 * k1:.2f} | {fs:.1f} | {ps:.1f} | {ks:.1f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
