"""What every benchmark script does with its result: record the command that produced it, write it as JSON.

Every ``path`` may be ``-`` (``PRINT_ONLY``): the result is then printed and no file is written.
"""
from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PRINT_ONLY = "-"


def command_line(module: str, args: Sequence[str] | None = None) -> str:
    """The shell command that reruns the bench module ``module`` (e.g. ``bench.real_video``) from the repository root.

    ``args`` are the script's arguments (None: this process's own, as ``main(argv=None)`` parses them).
    """
    return shlex.join([".venv/bin/python", "-m", module, *(sys.argv[1:] if args is None else args)])


def write_result(path: Path | str, result: dict, echo: bool = True) -> None:
    """Write ``result`` to ``path`` as indented JSON, replacing the file (folders created); print it when ``echo``."""
    if echo:
        _show(result)
    _save(path, result)


def write_or_fail(path: Path | str, module: str, argv: Sequence[str] | None, note: str,
                  produce: Callable[[], dict], errors: tuple[type[BaseException], ...]) -> int:
    """Write ``produce()``'s result with its command and ``note`` to ``path`` (exit code 0), or print one of
    ``errors`` as one line ``error: ...`` and write nothing (exit code 2)."""
    try:
        result = produce() | {"command": command_line(module, argv), "note": note}
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_result(path, result)
    return 0


def merge_result(path: Path | str, result: dict, placeholders: Iterable[str] = ()) -> None:
    """Print ``result`` and merge its keys into the JSON object at ``path``, keeping the keys other benchmarks wrote.

    ``placeholders`` are keys another benchmark fills: null until it has run.
    """
    _show(result)
    if str(path) == PRINT_ONLY:
        return
    merged = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    merged.update(result)
    for key in placeholders:
        merged.setdefault(key, None)
    _save(path, merged)


def append_result(path: Path | str, result: dict) -> None:
    """Print ``result`` and append it to the JSON list of runs at ``path``."""
    _show(result)
    if str(path) == PRINT_ONLY:
        return
    runs = json.loads(Path(path).read_text()) if Path(path).exists() else []
    _save(path, runs + [result])


def _show(result: dict) -> None:
    """Print ``result`` as indented JSON."""
    print(json.dumps(result, indent=2))


def _save(path: Path | str, data: dict | list) -> None:
    """Write ``data`` to ``path`` as indented JSON (folders created), unless ``path`` is ``PRINT_ONLY``."""
    if str(path) == PRINT_ONLY:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
