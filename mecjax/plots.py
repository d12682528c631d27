"""Pictures of a run, from host arrays to matplotlib figures and PNG files (no JAX here).

- ``tsne_figure``: a 2-D t-SNE map (scikit-learn) of encoder features, one colour per class
  (MEC appendix B): classes that separate in the map separate in the features.
- ``spectrum_figure``: the singular values of the centred embedding and feature matrices,
  sorted, divided by the largest, on a log scale, with each matrix's effective rank: a
  dimensionally collapsed representation shows as a cliff (Jing et al., 2022).
- ``curves_figure``: loss, ``knn_top1`` and ``probe_top1`` against the step (and the epoch)
  from ``metrics.jsonl`` rows; a metric the run did not log gets a note on its panel.
- ``compare_figure``: one metric of several runs against the epoch (or step), one line per
  run (E2MC paper Fig. 3: accuracy over the continued epochs, per criterion).
- ``music_joint_figure``: MUSIC's joint distribution ``P`` of the two views' symbols, one
  segment's block and the mean block, as heatmaps (``losses.music.music_joint`` computes it).

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas: no pyplot, no global
backend, nothing shown on screen; each has a fixed size in inches so the PNG's pixel size is
``figsize x DPI`` and a title that says what it shows.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np

DPI = 100
TSNE_SIZE = (8.0, 7.0)           # inches; the PNG is DPI times this
SPECTRUM_SIZE = (8.0, 5.0)
CURVES_SIZE = (13.0, 4.0)
MUSIC_SIZE = (11.0, 5.0)
CURVE_METRICS = ("loss", "knn_top1", "probe_top1")
# Singular values below this fraction of the largest are float32 rounding noise (a centred
# matrix of N rows has rank at most N - 1): they are left off the log-scale plot.
REL_FLOOR = 1e-6


def new_figure(size: tuple[float, float]):
  """A Figure on the Agg canvas with constrained layout (its PNG is exactly size x DPI)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=size, dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def save(fig, path: str) -> str:
  """Write ``fig`` as a PNG of ``figsize x DPI`` pixels (no tight cropping); returns ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, format="png")
  return path


# ------------------------------------------------------------------ t-SNE

def tsne_points(features: np.ndarray, *, perplexity: float = 30.0, seed: int = 0,
                max_iter: int = 1000, pca_dims: int = 50) -> np.ndarray:
  """(N, F) features -> (N, 2) t-SNE coordinates.

  Rows are L2-normalised first (the kNN monitor compares features by cosine) and reduced
  to ``pca_dims`` principal components when wider (the usual t-SNE preparation; it keeps
  Barnes-Hut's neighbour search cheap). scikit-learn's exact settings otherwise: PCA
  initialisation, ``learning_rate='auto'``.
  """
  from sklearn.decomposition import PCA
  from sklearn.manifold import TSNE
  x = np.asarray(features, np.float64)
  if x.ndim != 2:
    raise ValueError(f"t-SNE expects (N, F) features, got shape {x.shape}")
  n = len(x)
  if not 0 < perplexity < n:
    raise ValueError(f"t-SNE perplexity {perplexity} must be in (0, {n}), the number of "
                     "examples: lower --perplexity or raise --examples")
  if max_iter < 250:
    raise ValueError(f"t-SNE needs at least 250 iterations, got {max_iter}")
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  if x.shape[1] > pca_dims and n > pca_dims:
    x = PCA(n_components=pca_dims, random_state=seed).fit_transform(x)
  return TSNE(n_components=2, perplexity=perplexity, max_iter=max_iter, init="pca",
              learning_rate="auto", random_state=seed).fit_transform(x)


def tsne_figure(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *,
                title: str, perplexity: float = 30.0, seed: int = 0, max_iter: int = 1000):
  """t-SNE map of (N, F) ``features``, points coloured by ``labels`` (indices into
  ``class_names``); the legend has one entry per class present."""
  labels = np.asarray(labels)
  if len(labels) != len(features):
    raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
  points = tsne_points(features, perplexity=perplexity, seed=seed, max_iter=max_iter)
  import matplotlib
  fig = new_figure(TSNE_SIZE)
  ax = fig.add_subplot()
  present = np.unique(labels)
  size = float(np.clip(8000 / len(labels), 4, 30))   # marker area: dots fill the map at any N
  cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
  for c in present:
    name = class_names[c] if 0 <= c < len(class_names) else f"class {c}"
    at = labels == c
    ax.scatter(points[at, 0], points[at, 1], s=size, alpha=0.7, color=cmap(int(c) % cmap.N),
               label=name, linewidths=0)
  ax.set_xlabel("t-SNE 1")
  ax.set_ylabel("t-SNE 2")
  ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8,
            title="class")
  ax.set_title(f"{title}\nt-SNE of encoder features of {len(labels)} images coloured by "
               f"class (perplexity {perplexity:g})", fontsize=9)
  return fig


# ------------------------------------------------------------------ spectrum

@dataclasses.dataclass
class Spectrum:
  """Singular values of a centred (N, D) matrix: ``values`` sorted descending (float64,
  ``min(N, D)`` of them), ``normalised = values / values[0]``, and the effective rank
  ``exp(H(p))``, ``p = values / sum(values)`` (Roy & Vetterli; the ``effective_rank`` that
  ``monitors`` logs per batch)."""
  values: np.ndarray
  normalised: np.ndarray
  effective_rank: float


def spectrum(x: np.ndarray) -> Spectrum:
  """The singular-value spectrum of ``x - mean(x, axis=0)``, (N, D) in float64."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or min(x.shape) < 2:
    raise ValueError(f"a spectrum needs an (N, D) matrix with N, D >= 2, got {x.shape}")
  s = np.linalg.svd(x - x.mean(axis=0, keepdims=True), compute_uv=False)
  top = s[0] if s[0] > 0 else 1.0
  p = s / max(s.sum(), 1e-300)
  nz = p[p > 0]
  return Spectrum(values=s, normalised=s / top,
                  effective_rank=float(np.exp(-np.sum(nz * np.log(nz)))))


def spectrum_figure(matrices: dict[str, np.ndarray], *, title: str):
  """Normalised singular values (log scale) of each named (N, D) matrix, one line each, the
  effective rank in the legend and printed on the panel."""
  fig = new_figure(SPECTRUM_SIZE)
  ax = fig.add_subplot()
  notes = []
  for name, x in matrices.items():
    sp = spectrum(x)
    keep = sp.normalised > REL_FLOOR
    k = np.arange(1, len(sp.values) + 1)
    ax.plot(k[keep], sp.normalised[keep], lw=1.5,
            label=f"{name} (N={x.shape[0]}, D={x.shape[1]}): effective rank "
                  f"{sp.effective_rank:.1f}")
    notes.append(f"{name}: effective rank {sp.effective_rank:.1f} of {x.shape[1]}")
  ax.set_yscale("log")
  ax.set_xlabel("singular value index k (sorted, descending)")
  ax.set_ylabel("σ_k / σ_1 (centred matrix)")
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(loc="lower left", fontsize=8)
  ax.text(0.98, 0.98, "\n".join(notes), transform=ax.transAxes, ha="right", va="top",
          fontsize=9, bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
  ax.set_title(f"{title}\nsingular-value spectrum (a collapsed dimension falls off the "
               f"curve; values below {REL_FLOOR:g} σ_1 not drawn)", fontsize=9)
  return fig


# ------------------------------------------------------------------ training curves

def curve(rows: Sequence[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of ``metric`` over the rows that logged it, finite values only."""
  pts = [(r["step"], r[metric]) for r in rows
         if metric in r and isinstance(r[metric], (int, float)) and math.isfinite(r[metric])]
  if not pts:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*pts)
  return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def steps_per_epoch(rows: Sequence[dict]) -> float | None:
  """The run's steps per epoch from rows logging both (None if no row does)."""
  ratios = [r["step"] / r["epoch"] for r in rows
            if isinstance(r.get("epoch"), (int, float)) and r["epoch"] > 0]
  return float(np.median(ratios)) if ratios else None


def curves_figure(rows: Sequence[dict], *, title: str,
                  metrics: Sequence[str] = CURVE_METRICS):
  """One panel per metric against the step (top axis: epoch, where the rows give it). A
  metric absent from every row leaves its panel empty with a note saying so."""
  fig = new_figure(CURVES_SIZE)
  axes = fig.subplots(1, len(metrics), squeeze=False)[0]
  per_epoch = steps_per_epoch(rows)
  for ax, metric in zip(axes, metrics):
    steps, values = curve(rows, metric)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    if not len(steps):
      ax.set_title(f"{metric}: not logged", fontsize=9)
      ax.text(0.5, 0.5, f"no '{metric}' in metrics.jsonl\n(skipped)", transform=ax.transAxes,
              ha="center", va="center", fontsize=10, color="0.4")
      ax.set_xticks([])
      ax.set_yticks([])
      continue
    ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, ms=3, lw=1.2)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{metric} (last {values[-1]:.4g} at step {int(steps[-1])})", fontsize=9)
    if per_epoch:
      top = ax.secondary_xaxis("top", functions=(lambda s, k=per_epoch: s / k,
                                                 lambda e, k=per_epoch: e * k))
      top.set_xlabel("epoch", fontsize=8)
  fig.suptitle(f"{title}: training curves from metrics.jsonl", fontsize=10)
  return fig


COMPARE_SIZE = (6.5, 4.5)


def compare_figure(runs: dict[str, Sequence[dict]], *, metric: str, title: str,
                   x: str = "epoch"):
  """``metric`` of each run (label -> its metrics.jsonl rows) against ``x``: ``'epoch'``
  (step / the run's steps per epoch, from its rows; the step where a run logs no epoch) or
  ``'step'``. Raises ValueError naming the run when a run never logged ``metric``."""
  if x not in ("epoch", "step"):
    raise ValueError(f"x={x!r}: expected 'epoch' or 'step'")
  fig = new_figure(COMPARE_SIZE)
  ax = fig.subplots()
  xlabel = x
  for label, rows in runs.items():
    steps, values = curve(rows, metric)
    if not len(steps):
      raise ValueError(f"run {label!r} logged no finite {metric!r} (keys: "
                       f"{sorted({k for r in rows for k in r})})")
    per_epoch = steps_per_epoch(rows) if x == "epoch" else None
    if x == "epoch" and not per_epoch:
      xlabel = "step (a run logged no epoch)"
    xs = steps / per_epoch if per_epoch else steps
    ax.plot(xs, values, marker="o" if len(xs) <= 40 else None, ms=3, lw=1.4,
            label=f"{label} (last {values[-1]:.4g})")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(metric)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=10)
  return fig


# ------------------------------------------------------------------ MUSIC joint distribution

def music_joint_figure(p: np.ndarray, *, title: str, segment: int = 0):
  """Heatmaps of MUSIC's (S, D_S, D_S) per-segment joint distribution ``p``: segment
  ``segment``'s block and the mean block over segments; rows view 1's symbol, columns view
  2's. The ideal code puts ``1 / D_S`` on the diagonal: each title gives the diagonal mass
  (trace, ideal 1) and the largest marginal (ideal ``1 / D_S``)."""
  p = np.asarray(p, np.float64)
  if p.ndim != 3 or p.shape[1] != p.shape[2]:
    raise ValueError(f"MUSIC's joint distribution is (S, D_S, D_S), got shape {p.shape}")
  segments, size = p.shape[:2]
  if not 0 <= segment < segments:
    raise ValueError(f"segment {segment} out of range: P has {segments} segments")
  fig = new_figure(MUSIC_SIZE)
  axes = fig.subplots(1, 2)
  panels = ((p[segment], f"segment {segment} of {segments}"),
            (p.mean(axis=0), f"mean over the {segments} segments"))
  for ax, (block, what) in zip(axes, panels):
    im = ax.imshow(block, cmap="viridis", interpolation="nearest", origin="upper")
    fig.colorbar(im, ax=ax, shrink=0.8, label="P[i, j]")
    ax.set_xlabel("view 2 symbol j")
    ax.set_ylabel("view 1 symbol i")
    ax.set_title(f"{what}\ntrace {np.trace(block):.3f} (ideal 1), max marginal "
                 f"{block.sum(axis=1).max():.3f} (ideal {1 / size:.3f})", fontsize=9)
  fig.suptitle(f"{title}: MUSIC joint distribution P of the two views' symbols "
               f"(D_S={size})", fontsize=10)
  return fig
