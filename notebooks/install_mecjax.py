"""Install mecjax from a checkout into the running Python without replacing its accelerator
stack: ``python notebooks/install_mecjax.py ROOT [EXTRA ...]`` (the notebooks' first cell).

A Colab GPU or TPU runtime ships its own jax, jaxlib and jax plugin (CUDA / libtpu), flax
and TensorFlow. A pinned install would swap them for the CPU builds and the notebook would
train on the CPU. So the requirements come from ROOT/pyproject.toml (ranges, not pins), and
every one of jax, jaxlib, flax and TensorFlow that is already installed at a version inside
its range is held at that version by a pip constraint; so are the installed jax plugins
while jax is held. TensorFlow may be installed under another distribution name
(``tensorflow`` on Colab, ``tensorflow-cpu`` here): the one installed stands for the
``tfds`` extra's ``tensorflow-cpu``, so two distributions never share one package folder.
Nothing is run when mecjax at ROOT's version and all its requirements are already there.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import tomllib

try:
  from packaging.requirements import Requirement
  from packaging.version import Version
except ImportError:   # a bare venv: pip's own copy
  from pip._vendor.packaging.requirements import Requirement
  from pip._vendor.packaging.version import Version

EXTRAS = ("tfds", "notebooks")
# Held at their installed version when it is inside mecjax's range.
HELD = ("jax", "jaxlib", "flax")
TENSORFLOW = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel",
              "tensorflow-macos", "tf-nightly", "tf-nightly-cpu")
# Accelerator plugins that must keep jax's version: held whenever jax is.
PLUGIN = re.compile(r"^(jax-cuda\d+-(plugin|pjrt)|jax-rocm\d+-(plugin|pjrt)|libtpu(-nightly)?)$")


def canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def requirements(root: str, extras=EXTRAS) -> list[Requirement]:
  """ROOT/pyproject.toml's dependencies plus those of ``extras`` (mecjax[...] expanded)."""
  with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  optional = project.get("optional-dependencies", {})
  out, seen, todo = [], set(), list(extras)
  for spec in project.get("dependencies", []):
    out.append(Requirement(spec))
  while todo:
    extra = todo.pop()
    if extra in seen:
      continue
    if extra not in optional:
      raise SystemExit(f"install_mecjax: error: pyproject.toml has no extra {extra!r}: "
                       f"expected one of {sorted(optional)}")
    seen.add(extra)
    for spec in optional[extra]:
      req = Requirement(spec)
      if canonical(req.name) == canonical(project["name"]):
        todo += sorted(req.extras)
      else:
        out.append(req)
  return [r for r in out if r.marker is None or r.marker.evaluate({"extra": ""})]


def installed_versions() -> dict[str, str]:
  return {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
          if d.metadata["Name"]}


def satisfied(req: Requirement, version: str | None) -> bool:
  return version is not None and req.specifier.contains(Version(version), prereleases=True)


def plan(reqs: list[Requirement], installed: dict[str, str]) -> tuple[list[str], list[str]]:
  """(requirements to hand pip, constraints ``name==version`` holding installed packages).

  ``installed`` maps canonical distribution names to versions (the environment, or a fake
  one in the tests)."""
  to_install, constraints = [], []
  for req in reqs:
    name = canonical(req.name)
    if name in TENSORFLOW:
      present = next((n for n in TENSORFLOW if n in installed), None)
      if present is not None:
        if satisfied(req, installed[present]):
          constraints.append(f"{present}=={installed[present]}")
          continue
        # Upgrade the distribution that is there rather than adding a second one.
        req = Requirement(f"{present}{req.specifier}")
        name = present
    elif name in HELD and satisfied(req, installed.get(name)):
      constraints.append(f"{name}=={installed[name]}")
    to_install.append(str(req))
  if "jax==" + installed.get("jax", "") in constraints:
    constraints += [f"{n}=={v}" for n, v in sorted(installed.items()) if PLUGIN.match(n)]
  return to_install, constraints


def already_installed(root: str, reqs: list[Requirement], installed: dict[str, str]) -> bool:
  """mecjax at ROOT's version and every requirement met (TensorFlow under any of its names)."""
  version = re.search(r'^__version__ = "([^"]+)"',
                      open(os.path.join(root, "mecjax", "__init__.py")).read(), re.M).group(1)
  if installed.get("mecjax") != version:
    return False
  for req in reqs:
    name = canonical(req.name)
    if name in TENSORFLOW:
      if not any(satisfied(req, installed.get(n)) for n in TENSORFLOW):
        return False
    elif not satisfied(req, installed.get(name)):
      return False
  return True


def main(argv: list[str]) -> int:
  if not argv:
    print(__doc__.split("\n\n")[0], file=sys.stderr)
    return 2
  root, extras = os.path.abspath(argv[0]), tuple(argv[1:]) or EXTRAS
  reqs = requirements(root, extras)
  installed = installed_versions()
  if already_installed(root, reqs, installed):
    print(f"mecjax {installed['mecjax']} and its requirements are already installed")
    return 0
  to_install, constraints = plan(reqs, installed)
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("\n".join(constraints) + "\n")
  try:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "-c", f.name, root, *to_install]
    print("kept:", ", ".join(constraints) or "nothing installed yet")
    print("+", " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd).returncode
  finally:
    os.unlink(f.name)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
