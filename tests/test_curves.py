"""`python -m mecjax.evaluate curves`: one metric of several runs in one PNG (E2MC paper
Fig. 3), on tiny fake metrics.jsonl files."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from mecjax import evaluate, plots


def fake_run(path, knn, steps_per_epoch=10):
  path.mkdir()
  rows = []
  for i, acc in enumerate(knn, start=1):
    step = i * steps_per_epoch
    rows.append({"step": step - 5, "loss": 1.0 / i, "epoch": (step - 5) / steps_per_epoch})
    rows.append({"step": step, "knn_top1": acc})
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_curves_draws_one_line_per_run_against_the_epoch(tmp_path, capsys):
  a = fake_run(tmp_path / "e2mc", [0.40, 0.45, 0.47])
  b = fake_run(tmp_path / "mmcr", [0.41, 0.42, 0.42, 0.43], steps_per_epoch=20)
  out = tmp_path / "fig" / "fig3.png"
  assert evaluate.main(["curves", "--runs", str(a), str(b), "--labels", "E2MC", "MMCR",
                        "--metric", "knn_top1", f"--out={out}"]) == 0
  assert capsys.readouterr().out.strip() == str(out)
  with Image.open(out) as im:
    assert im.size == tuple(int(v * plots.DPI) for v in plots.COMPARE_SIZE)
  # The figure's data: epochs 1..n per run (steps / steps per epoch), the logged values.
  fig = plots.compare_figure({"E2MC": [json.loads(l) for l in (a / "metrics.jsonl")
                                       .read_text().splitlines()]},
                             metric="knn_top1", title="t")
  (line,) = fig.axes[0].get_lines()
  np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])
  np.testing.assert_allclose(line.get_ydata(), [0.40, 0.45, 0.47])
  assert "E2MC" in fig.axes[0].get_legend().get_texts()[0].get_text()


def test_curves_stops_with_one_line_for_a_missing_metric_or_run(tmp_path, capsys):
  a = fake_run(tmp_path / "a", [0.4])
  assert evaluate.main(["curves", "--runs", str(a), "--metric", "probe_top1",
                        f"--out={tmp_path / 'x.png'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "'a' logged no finite 'probe_top1'" in err[0]
  assert evaluate.main(["curves", "--runs", str(tmp_path / "none"),
                        f"--out={tmp_path / 'x.png'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no metrics.jsonl" in err[0]
  assert not (tmp_path / "x.png").exists()
