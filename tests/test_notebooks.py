"""Every notebook executes top to bottom in smoke mode (MECJAX_NOTEBOOK_SMOKE=1), with the
shared (or synthetic) CIFAR-10 archive, and is stored with its outputs stripped."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, cli_env
from mecjax.metric_writers import read_metrics

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
  assert [p.name for p in NOTEBOOKS] == ["mec_cifar10.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
  nb = json.loads(path.read_text())
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, tmp_path, cifar_path, compile_cache, monkeypatch):
  workdir = tmp_path / "run"
  env = cli_env(1, compile_cache, {"MECJAX_NOTEBOOK_SMOKE": "1", "MECJAX_DATA": cifar_path,
                                   "MECJAX_WORKDIR": str(workdir)})
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(path.parent)}}).execute()
  rows = read_metrics(str(workdir))
  assert rows[-1]["step"] == 12 and "knn_top1" in rows[-1]
  # The plot cell drew its figure.
  assert any(o.get("output_type") == "display_data" for o in nb.cells[-1].outputs)
