"""`kpr demo --quick`: the whole product path on a tiny world, with its report files."""
from __future__ import annotations

import json
import re

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.integration


def test_quick_demo_writes_its_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0, "the demo exits 1 when search is no better than chance"
    report = json.loads((out / "demo_report.json").read_text())
    assert report["queries"] >= 6 and report["identities"] >= 3
    # The quick demo's tiny model finds the right person first for about 0.45 of the queries (chance 0.14).
    assert report["cross_camera_top1"] > 2 * report["chance_top1"]
    assert report["cross_camera_map"] > 1.5 * report["chance_map"]
    assert report["ingest"]["videos_done"] == 3 and report["ingest"]["videos_failed"] == 0
    assert report["wall_s"] > 0
    page = (out / "demo_report.html").read_text()
    assert page.count("class='query'") == report["identities"]
    for section in page.split("<h2>")[1:]:  # people, not detections: each tracklet once, with its span and matches
        tracks = re.findall(r"<br>track ([^<]+)<br>", section)
        assert tracks and len(tracks) == len(set(tracks)) and "detections matched" in section
    assert "cross-camera top-1" in capsys.readouterr().out


def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "was not made by `kpr demo`" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
