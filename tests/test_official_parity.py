"""The official-parity bench script's command line, without the official code (it is not part of CI)."""
from __future__ import annotations

import sys

import pytest

from bench import official_parity


def test_help_names_the_official_checkout_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        official_parity.main(["--help"])
    assert exit_info.value.code == 0
    assert "--official-repo" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["--official-repo", "{tmp}/absent"], ["--official-repo", "{tmp}"]])
def test_missing_official_checkout_is_one_line_exit_2(argv, tmp_path, capsys) -> None:
    path_before = list(sys.path)
    code = official_parity.main([a.format(tmp=tmp_path) for a in argv] + ["--output", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: --official-repo")
    assert sys.path == path_before and not (tmp_path / "out.json").exists()
