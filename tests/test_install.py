"""The packaging pieces that need no build: the notebooks' install plan against fake
environments, pyproject's extras, the ``mecjax`` console command's dispatch, and the
``colab_gpu`` variants the notebooks pick on an accelerator."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO
from mecjax import cli, configlib

spec = importlib.util.spec_from_file_location("install_mecjax",
                                              REPO / "notebooks" / "install_mecjax.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)

REQS = install.requirements(str(REPO))
NAMES = {install.canonical(r.name) for r in REQS}
COLAB_GPU = {"jax": "0.10.1", "jaxlib": "0.10.1", "jax-cuda12-plugin": "0.10.1",
             "jax-cuda12-pjrt": "0.10.1", "flax": "0.12.8", "tensorflow": "2.21.0",
             "numpy": "2.0.2"}


def test_requirements_are_the_runtime_plus_tfds_and_notebooks_extras():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  extras = project["optional-dependencies"]
  assert set(extras) == {"tfds", "torch", "notebooks", "test", "cuda", "tpu"}
  assert {"jax", "jaxlib", "flax", "grain", "tensorflow-datasets", "tensorflow-cpu",
          "matplotlib", "scikit-learn", "nbclient"} <= NAMES
  assert "torch" not in NAMES and "pytest" not in NAMES and "mecjax" not in NAMES
  # The test extra pulls tfds and notebooks through mecjax[...]: expanded, not installed.
  test = {install.canonical(r.name) for r in install.requirements(str(REPO), ("test",))}
  assert {"pytest", "pytest-xdist", "tensorflow-datasets", "nbclient"} <= test
  assert all("==" not in d and "<" not in d for d in project["dependencies"])
  with pytest.raises(SystemExit, match="no extra 'gpu'"):
    install.requirements(str(REPO), ("gpu",))


def test_an_accelerator_runtime_keeps_its_jax_plugins_flax_and_tensorflow():
  to_install, held = install.plan(REQS, COLAB_GPU)
  assert set(held) == {"jax==0.10.1", "jaxlib==0.10.1", "jax-cuda12-plugin==0.10.1",
                       "jax-cuda12-pjrt==0.10.1", "flax==0.12.8", "tensorflow==2.21.0"}
  # Colab's `tensorflow` stands for the tfds extra's tensorflow-cpu: no second distribution.
  assert not any(r.startswith("tensorflow-cpu") for r in to_install)
  assert any(r.startswith("tensorflow-datasets") for r in to_install)
  assert "numpy>=2.4.6" in to_install and "numpy==2.0.2" not in held   # outside: upgraded


def test_versions_outside_the_ranges_are_upgraded_in_place():
  old = dict(COLAB_GPU, jax="0.9.0", jaxlib="0.9.0", flax="0.10.0", tensorflow="2.19.0")
  to_install, held = install.plan(REQS, old)
  assert held == []   # nor the plugins: they follow jax's version
  assert "jax>=0.10.1" in to_install and "flax>=0.12.8" in to_install
  assert "tensorflow>=2.21.0" in to_install   # the installed distribution, upgraded
  assert not any(r.startswith("tensorflow-cpu") for r in to_install)


def test_a_bare_environment_gets_everything_and_the_cpu_tensorflow():
  to_install, held = install.plan(REQS, {})
  assert held == [] and "tensorflow-cpu>=2.21.0" in to_install and "jax>=0.10.1" in to_install


def test_nothing_is_run_when_mecjax_and_its_requirements_are_there():
  full = {install.canonical(r.name): str(r.specifier).split(">=")[1] for r in REQS}
  import mecjax
  version = mecjax.__version__
  assert not install.already_installed(str(REPO), REQS, full)   # no mecjax yet
  full["mecjax"] = version
  assert install.already_installed(str(REPO), REQS, full)
  del full["tensorflow-cpu"]
  assert install.already_installed(str(REPO), REQS, dict(full, tensorflow="2.21.0"))
  assert not install.already_installed(str(REPO), REQS, dict(full, jax="0.9.0"))


# In this process another test may have imported mecjax.export already; runpy warns that
# it runs the module anew (the console command starts without it, so it never warns).
@pytest.mark.filterwarnings("ignore:'mecjax.export' found in sys.modules:RuntimeWarning")
def test_console_command_dispatches_with_the_module_commands_flags(capsys):
  assert cli.main([]) == 2
  assert cli.main(["--help"]) == 0 and "train" in capsys.readouterr().out
  assert cli.main(["fit"]) == 2 and "unknown command 'fit'" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:   # argparse of mecjax.export: its own flags
    cli.main(["export", "--format=nope"])
  assert e.value.code == 2
  proc = subprocess.run([sys.executable, "-m", "mecjax.cli", "train", "--workdir=/tmp/x"],
                        capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode != 0 and "config" in proc.stderr.lower()


@pytest.mark.parametrize("spec", ["mec_cifar10.py", "music_cifar10.py", "vicreg_cifar10.py",
                                  "e2mc_vicreg_cifar10.py"])
def test_colab_gpu_variants_are_full_width_resnet18_runs_of_a_few_epochs(spec):
  cpu = configlib.load(str(REPO / "configs" / spec), "short" if "e2mc" in spec else "cpu")
  gpu = configlib.load(str(REPO / "configs" / spec), "colab_gpu")
  assert gpu.model.name == "resnet18_cifar" and gpu.model.width == 1.0 > cpu.model.width
  assert gpu.batch_size == 512 and 1 <= gpu.total_epochs <= 5
  assert gpu.method == cpu.method and gpu.regularizer.name == cpu.regularizer.name
  if "e2mc" in spec:   # continues the colab_gpu base, at its width
    assert gpu.init.workdir == "runs/vicreg_cifar10_colab_gpu"
    assert configlib.load(str(REPO / "configs" / spec), "colab_gpu,continued") \
        .regularizer.name != gpu.regularizer.name
