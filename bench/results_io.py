"""What every benchmark script does with its result: record the command that produced it, write it as JSON."""
from __future__ import annotations

import json
import shlex
from pathlib import Path


def command_line(script: str, args: list[str]) -> str:
    """The shell command that reruns ``script`` with ``args`` from the repository root."""
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", script, *args])


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` to ``path`` as indented JSON (folders created) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
