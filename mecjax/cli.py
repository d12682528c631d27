"""The ``mecjax`` console command: ``mecjax train|evaluate|export ...``.

One name for the three module commands, with their flags unchanged:

  mecjax train --config=... --workdir=...   = python -m mecjax.main --config=... --workdir=...
  mecjax evaluate knn|plots|e2mc ...        = python -m mecjax.evaluate knn|plots|e2mc ...
  mecjax export --workdir=... ...           = python -m mecjax.export --workdir=... ...
"""

from __future__ import annotations

import sys

COMMANDS = {
    "train": "pre-training or the offline evaluation config.task names (python -m mecjax.main)",
    "evaluate": "kNN, plots and E2MC pictures of a run (python -m mecjax.evaluate)",
    "export": "a run's encoder for PyTorch / detectron2 (python -m mecjax.export)",
}


MODULES = {"train": "mecjax.main", "evaluate": "mecjax.evaluate", "export": "mecjax.export"}


def usage() -> str:
  lines = ["usage: mecjax {train,evaluate,export} [flags]", ""]
  lines += [f"  {name:9s} {what}" for name, what in COMMANDS.items()]
  lines += ["", "mecjax COMMAND --help lists a command's flags."]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(usage())
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"mecjax: error: unknown command {command!r}: expected one of "
          f"{', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
    return 2
  # Each command runs as ``python -m mecjax.<module>`` runs it (no module imports a command
  # line): the flags are handed over as the program's own, and its exit status is ours.
  import runpy
  sys.argv = [f"mecjax {command}", *rest]
  runpy.run_module(MODULES[command], run_name="__main__", alter_sys=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
