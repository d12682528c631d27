"""`mecjax.plots` and `python -m mecjax.evaluate plots`: the spectrum against numpy's SVD,
MUSIC's per-segment joint distribution against a float64 transliteration, curves that skip
missing metrics, and the command on tiny MEC and MUSIC runs trained in-process."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, REPO
from mecjax import configlib, evaluate, plots, train
from mecjax.losses.music import music_joint, music_terms, segment_softmax


# ------------------------------------------------------------------ spectrum

@pytest.mark.parametrize("shape", [(40, 12), (9, 30)])
def test_spectrum_is_numpy_svd_of_the_centred_matrix(shape):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape) * np.geomspace(1, 1e-3, shape[1]) + 5.0   # large shared mean
  sp = plots.spectrum(x.astype(np.float32))
  want = np.linalg.svd(x.astype(np.float32).astype(np.float64) -
                       x.astype(np.float32).astype(np.float64).mean(0), compute_uv=False)
  np.testing.assert_allclose(sp.values, want, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sp.normalised, want / want[0], rtol=1e-10, atol=1e-12)
  p = want / want.sum()
  p = p[p > 0]
  np.testing.assert_allclose(sp.effective_rank, np.exp(-np.sum(p * np.log(p))), rtol=1e-10)
  # Without the centring the shared mean would be the top singular direction.
  assert np.linalg.svd(x, compute_uv=False)[0] > 3 * sp.values[0]


def test_spectrum_of_a_rank_two_matrix_has_effective_rank_at_most_two():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 16))
  sp = plots.spectrum(x)
  assert 1.0 < sp.effective_rank <= 2.0 + 1e-9
  assert (sp.normalised[2:] < 1e-12).all()


# ------------------------------------------------------------------ MUSIC joint distribution

def numpy_joint(x1, x2, size, t):
  """P[s] = Σ_n q1[n, s]ᵀ q2[n, s] / N, q the clamped segment softmax: float64 numpy."""
  def q(x):
    z = x.reshape(len(x), -1, size) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return np.maximum(e / e.sum(-1, keepdims=True), 1e-8)
  a, b = q(x1), q(x2)
  return np.einsum("nsi,nsj->sij", a, b) / len(x1)


@pytest.mark.parametrize("t", [1.0, 0.3])
def test_music_joint_is_a_joint_distribution_per_segment(t):
  rng = np.random.default_rng(2)
  x1, x2 = rng.normal(size=(2, 24, 5 * 8)) * 3
  with jax.enable_x64(True):
    a, b = jnp.asarray(x1, jnp.float64), jnp.asarray(x2, jnp.float64)
    p = np.asarray(music_joint(a, b, segment_size=8, temperature=t))
    q1 = np.asarray(segment_softmax(a, 8, t))
    q2 = np.asarray(segment_softmax(b, 8, t))
    terms = music_terms(a, b, segment_size=8, temperature=t)
  assert p.shape == (5, 8, 8)
  np.testing.assert_allclose(p, numpy_joint(x1, x2, 8, t), rtol=1e-12, atol=1e-15)
  # The clamp lifts cells to 1e-8, so totals exceed 1 by at most D_S^2 * 1e-8.
  np.testing.assert_allclose(p.sum(axis=(1, 2)), 1.0, atol=1e-6)
  np.testing.assert_allclose(p.sum(axis=2), q1.mean(axis=0), atol=1e-6)
  np.testing.assert_allclose(p.sum(axis=1), q2.mean(axis=0), atol=1e-6)
  # music_terms' diagonal term is read off the same P.
  diag = np.diagonal(p, axis1=1, axis2=2)
  np.testing.assert_allclose(float(terms["diagonal"]), np.sum(diag * np.log(diag)) / 5,
                             rtol=1e-12)


def test_music_joint_float32_and_shape_errors():
  rng = np.random.default_rng(3)
  x1, x2 = rng.normal(size=(2, 16, 32)).astype(np.float32)
  p = np.asarray(music_joint(jnp.asarray(x1), jnp.asarray(x2), segment_size=16))
  np.testing.assert_allclose(p, numpy_joint(x1.astype(np.float64), x2.astype(np.float64),
                                            16, 1.0), rtol=1e-5, atol=1e-8)
  with pytest.raises(ValueError, match="one shape"):
    music_joint(jnp.asarray(x1), jnp.asarray(x2[:, :16]), segment_size=16)
  with pytest.raises(ValueError, match="not a multiple of segment_size"):
    music_joint(jnp.asarray(x1), jnp.asarray(x2), segment_size=5)


# ------------------------------------------------------------------ curves

def test_curves_skip_missing_metrics_and_non_finite_values():
  rows = [{"step": 2, "epoch": 0.5, "loss": 1.0},
          {"step": 4, "epoch": 1.0, "loss": "nan"},      # how the writer stores a NaN
          {"step": 6, "epoch": 1.5, "loss": 0.25, "knn_top1": 0.3}]
  fig = plots.curves_figure(rows, title="t")
  loss_ax, knn_ax, probe_ax = fig.axes[:3]
  (line,) = loss_ax.get_lines()
  np.testing.assert_array_equal(line.get_xdata(), [2, 6])
  np.testing.assert_array_equal(line.get_ydata(), [1.0, 0.25])
  (line,) = knn_ax.get_lines()
  np.testing.assert_array_equal(line.get_ydata(), [0.3])
  assert len(probe_ax.get_lines()) == 0
  assert any("no 'probe_top1' in metrics.jsonl" in t.get_text() for t in probe_ax.texts)
  assert not any("no '" in t.get_text() for t in loss_ax.texts + knn_ax.texts)
  assert plots.steps_per_epoch(rows) == 4.0


# ------------------------------------------------------------------ the command

def tiny_run(spec: str, cifar_path: str, workdir: Path) -> Path:
  c = configlib.load(str(REPO / "configs" / spec))
  # A 1-block ViT compiles in about half the time of the smoke ResNet-18 (CI time); the
  # pictures depend on the encoder's outputs only.
  c.model.name, c.model.width, c.model.depth = "vit_tiny_cifar", 0.25, 1
  c.model.stage_sizes = None   # the smoke ResNet's blocks per stage
  c.data.path = cifar_path
  c.data.max_train_examples = 64
  c.data.max_eval_examples = 40
  c.total_steps = 2
  c.log_every_steps = 1
  c.checkpoint.every_steps = 2
  # No evaluators (their compilation is CI time): curves of logged kNN/probe rows are
  # tested on synthetic rows above; here their panels must say they were not logged.
  c.knn.enabled = False
  c.probe.enabled = False
  train.run(c, str(workdir))
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar_path):
  """A MEC run and a MUSIC run: 2 smoke steps each, in-process."""
  root = tmp_path_factory.mktemp("plot_runs")
  return {"mec": tiny_run("mec_cifar10.py:smoke", cifar_path, root / "mec"),
          "music": tiny_run("music_cifar10.py:smoke", cifar_path, root / "music")}


def run_plots(workdir: Path, monkeypatch, capsys) -> dict:
  """``evaluate.main(["plots", ...])``; {file name: figure} of what it saved."""
  figures = {}
  save = plots.save

  def keep(fig, path):
    figures[Path(path).name] = fig
    return save(fig, path)
  monkeypatch.setattr(plots, "save", keep)
  code = evaluate.main(["plots", f"--workdir={workdir}", "--examples=40", "--perplexity=5",
                        "--tsne-iters=250"])
  assert code == 0
  printed = [line for line in capsys.readouterr().out.splitlines() if line.endswith(".png")]
  assert printed == [str(workdir / "plots" / name) for name in figures]
  for name, fig in figures.items():
    with Image.open(workdir / "plots" / name) as im:
      assert im.format == "PNG"
      w, h = fig.get_size_inches() * plots.DPI
      assert im.size == (round(w), round(h))
      pixels = np.asarray(im.convert("L"), np.float64)
    assert pixels.std() > 10, f"{name} looks blank"
  return figures


def check_tsne_and_spectrum(figures, classes):
  ax = figures["tsne.png"].axes[0]
  names = [t.get_text() for t in ax.get_legend().get_texts()]
  assert names == list(classes)             # 40 balanced images: every class, one colour each
  colours = {tuple(c.get_facecolor()[0]) for c in ax.collections}
  assert len(colours) == len(classes)
  assert [len(c.get_offsets()) for c in ax.collections] == [4] * len(classes)
  assert "coloured by class" in ax.get_title()

  ax = figures["spectrum.png"].axes[0]
  lines = ax.get_lines()
  assert len(lines) == 2 and all(len(line.get_ydata()) > 3 for line in lines)
  assert all(line.get_ydata()[0] == 1.0 for line in lines)   # normalised by sigma_1
  assert all(np.all(np.diff(line.get_ydata()) <= 0) for line in lines)
  assert ax.get_yscale() == "log"
  assert sum("effective rank" in t.get_text() for t in ax.texts) == 1


def check_curves(fig):
  panels = fig.axes[:3]
  assert [ax.get_ylabel() for ax in panels] == ["loss", "knn_top1", "probe_top1"]
  (loss,) = panels[0].get_lines()
  np.testing.assert_array_equal(loss.get_xdata(), [1, 2])
  assert np.isfinite(loss.get_ydata()).all()
  for ax, name in zip(panels[1:], ("knn_top1", "probe_top1")):   # off: noted, not drawn
    assert len(ax.get_lines()) == 0 and f"no '{name}'" in ax.texts[0].get_text()


@pytest.mark.slow
def test_plots_of_a_mec_run(runs, monkeypatch, capsys):
  figures = run_plots(runs["mec"], monkeypatch, capsys)
  assert sorted(figures) == ["curves.png", "spectrum.png", "tsne.png"]
  check_tsne_and_spectrum(figures, CLASSES)
  check_curves(figures["curves.png"])


@pytest.mark.slow
def test_plots_of_a_music_run_include_p(runs, monkeypatch, capsys):
  figures = run_plots(runs["music"], monkeypatch, capsys)
  assert sorted(figures) == ["curves.png", "music_p.png", "spectrum.png", "tsne.png"]
  check_tsne_and_spectrum(figures, CLASSES)
  check_curves(figures["curves.png"])
  fig = figures["music_p.png"]
  heatmaps = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
  assert len(heatmaps) == 2                   # segment 0 and the mean over segments
  for p in heatmaps:
    assert p.shape == (16, 16)                # the smoke config's D_S
    np.testing.assert_allclose(np.sum(p), 1.0, atol=1e-4)
  assert "joint distribution" in fig.get_suptitle()


def test_plots_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
  assert evaluate.main(["plots", f"--workdir={tmp_path}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "not a mecjax run directory" in err[0]
