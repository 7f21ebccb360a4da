"""`kpr demo --quick`: the whole product path on a tiny world, with its report files."""
from __future__ import annotations

import json

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.integration


def test_quick_demo_writes_its_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--quick"])
    report = json.loads((out / "demo_report.json").read_text())
    assert report["queries"] >= 6 and report["identities"] >= 3
    for key in ("cross_camera_top1", "cross_camera_map", "chance_top1"):
        assert 0.0 <= report[key] <= 1.0
    assert report["ingest"]["videos_done"] == 3 and report["ingest"]["videos_failed"] == 0
    assert report["wall_s"] > 0
    page = (out / "demo_report.html").read_text()
    assert page.count("class='query'") == report["identities"]
    assert "cross-camera top-1" in capsys.readouterr().out


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "was not made by `kpr demo`" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
