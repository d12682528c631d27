"""The import graph of mecjax: arrows point one way.

Read statically (every ``import`` statement, lazy ones inside functions included), so a
cycle that only a particular call order would reveal is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mecjax

PACKAGE = Path(mecjax.__file__).resolve().parent


def module_name(path: Path) -> str:
  parts = ("mecjax",) + path.relative_to(PACKAGE).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """module -> the mecjax modules it imports (``from pkg import name`` counts as the
  submodule ``pkg.name`` when that is a module, else as ``pkg``)."""
  files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {m: set() for m in files}
  for mod, path in files.items():
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                   for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in files:
          t = t.rpartition(".")[0]
        if t.startswith("mecjax") and t != mod:
          graph[mod].add(t)
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def folder_of(module: str) -> str:
  """A subpackage's modules belong to it (``mecjax.data.pipeline`` -> ``mecjax.data``); the
  top-level modules are each their own node."""
  parts = module.split(".")
  is_package = (PACKAGE.joinpath(*parts[1:2]).is_dir() if len(parts) > 1 else False)
  return ".".join(parts[:2]) if is_package else module


def test_no_module_cycle():
  assert find_cycle(import_graph()) is None


def test_no_folder_cycle():
  folders: dict[str, set[str]] = {}
  for mod, targets in import_graph().items():
    for t in targets:
      a, b = folder_of(mod), folder_of(t)
      if a != b:
        folders.setdefault(a, set()).add(b)
  assert find_cycle(folders) is None


def test_nothing_imports_the_command_lines():
  graph = import_graph()
  for cli in ("mecjax.main", "mecjax.evaluate", "mecjax.export", "mecjax.cli"):
    importers = sorted(m for m, targets in graph.items() if cli in targets)
    assert importers == [], f"{cli} is imported by {importers}"


def test_the_checks_see_a_cycle_and_a_folder():
  # The detector itself: a planted cycle is found, and modules fold into their folder.
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
  assert folder_of("mecjax.data.pipeline") == "mecjax.data"
  assert folder_of("mecjax.train") == "mecjax.train"
  assert "mecjax.optim" in import_graph()["mecjax.train"]
