"""Every notebook executes top to bottom in smoke mode (MECJAX_NOTEBOOK_SMOKE=1), with the
shared (or synthetic) CIFAR-10 archive; each starts with the cell that installs mecjax and is
stored with its outputs stripped."""

from __future__ import annotations

import importlib.metadata
import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, cli_env
from mecjax.metric_writers import read_metrics

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

# What each notebook leaves under MECJAX_WORKDIR: {run directory: metrics its last row has},
# and the pictures it writes (shown inline).
EXPECTED = {
    "mec_cifar10.ipynb": ({"mec_smoke": ("knn_top1", "probe_top1"),
                           "mec_smoke_linear": ("linear_top1", "linear_top5")}, []),
    "music_cifar10.ipynb": ({"music_smoke": ("knn_top1", "music_diagonal")},
                            ["music_smoke/plots/music_p.png", "music_smoke/plots/tsne.png"]),
    "e2mc_cifar10.ipynb": ({"vicreg_smoke": ("knn_top1",),
                            "e2mc_vicreg_smoke": ("knn_top1", "reg_entropy"),
                            "continued_vicreg_smoke": ("knn_top1",)},
                           ["e2mc_vicreg_smoke/plots/e2mc_dims.png",
                            "e2mc_vicreg_smoke/plots/e2mc_neighbours.png"]),
}


def test_every_notebook_has_its_checks():
  assert sorted(p.name for p in NOTEBOOKS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_by_installing_and_is_stored_without_outputs(path):
  nb = json.loads(path.read_text())
  first = nb["cells"][0]
  source = "".join(first["source"])
  assert first["cell_type"] == "code" and "git" in source and "clone" in source
  # It installs the package through the script that holds the runtime's jax & co., never the
  # pinned requirements.txt, and puts no checkout on sys.path: the installed mecjax is used.
  assert "install_mecjax.py" in source and "requirements.txt" not in source
  assert "sys.path" not in source
  assert "default_backend()" in source and "device_count()" in source
  variants = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
  assert '"cpu" if jax.default_backend() == "cpu" else "colab_gpu"' in variants
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, tmp_path, cifar_path, compile_cache, monkeypatch):
  try:
    importlib.metadata.version("mecjax")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("mecjax is not installed in this Python (pip install -e .): the notebooks "
                "import the installed package, and their first cell would pip-install it")
  runs = tmp_path / "runs"
  env = cli_env(1, compile_cache, {"MECJAX_NOTEBOOK_SMOKE": "1", "MECJAX_DATA": cifar_path,
                                   "MECJAX_WORKDIR": str(runs)})
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(path.parent)}}).execute()
  run_metrics, pictures = EXPECTED[path.name]
  for run, keys in run_metrics.items():
    last = read_metrics(str(runs / run))[-1]
    assert all(k in last for k in keys), (run, sorted(last))
  for picture in pictures:
    assert (runs / picture).stat().st_size > 1000, picture
  # The plot cells drew their figures inline.
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
  assert len(images) >= 1 + len(pictures)
