"""The bench package's result files: the recorded command reruns the script as a module; replace, merge, append."""
from __future__ import annotations

import json
import shlex

from bench.results_io import PRINT_ONLY, append_result, command_line, merge_result, write_result


def test_command_line_reruns_the_module_from_the_repository_root() -> None:
    command = command_line("bench.real_video", ["--model", "my model"])
    assert shlex.split(command) == [".venv/bin/python", "-m", "bench.real_video", "--model", "my model"]


def test_write_replaces_merge_keeps_other_keys_append_adds_a_run(tmp_path) -> None:
    path = tmp_path / "results" / "out.json"
    write_result(path, {"a": 1, "b": 2})
    write_result(path, {"a": 3})
    assert json.loads(path.read_text()) == {"a": 3}
    merge_result(path, {"c": 4}, placeholders=("a", "d"))
    assert json.loads(path.read_text()) == {"a": 3, "c": 4, "d": None}
    runs = tmp_path / "runs.json"
    append_result(runs, {"run": 1})
    append_result(runs, {"run": 2})
    assert json.loads(runs.read_text()) == [{"run": 1}, {"run": 2}]


def test_print_only_writes_nothing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for write in (write_result, merge_result, append_result):
        write(PRINT_ONLY, {"x": 1})
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out.count('"x": 1') == 3
