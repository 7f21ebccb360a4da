"""`kpr list` and `kpr info` on real LanceDB stores: what a user sees to find a starting point, and its errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from test_search import build_store

from kpr_model.embeddings import ReIDEmbeddings, aggregate
from pipelines.cli import main
from storage import Store, detection_row, detections_table, tracklet_row, tracklets_table
from support import MODEL_ID, random_embeddings, video_row
from workers.crops import thumbnail_jpeg

PARTS, DIM = 4, 16
T0 = 1_767_254_400.0  # 2026-01-01T08:00:00Z
# (camera, video, start offset in s, tracklets, detections per tracklet)
VIDEOS = [("cam-a", "a1" * 16, 0, 2, 3), ("cam-a", "a2" * 16, 3600, 1, 4), ("cam-b", "b1" * 16, 600, 3, 2)]
NO_STORED_THUMBNAIL = "b1b1b1b1b1b1-t2"  # its thumbnail is its best detection's
BEST_FRAME = 1  # that tracklet's detection with the highest det_score x visibility


def _jpeg(shade: int) -> bytes:
    return thumbnail_jpeg(np.full((64, 32, 3), shade, np.uint8))


def _write_video(store: Store, camera: str, video_id: str, offset: float, tracks: int, per_track: int,
                 rng: np.random.Generator) -> None:
    """One video of ``tracks`` tracklets, ``per_track`` detections each, one detection per second."""
    video = video_row(video_id, camera, start_time=T0 + offset, duration=120.0)
    detections, tracklets, aggregated = [], [], []
    for t in range(1, tracks + 1):
        track = f"{video_id[:12]}-t{t}"
        embeddings = random_embeddings(rng, per_track, PARTS, DIM)
        frames = [10 * t + f for f in range(per_track)]
        scores = [0.9 if f == BEST_FRAME else 0.5 for f in range(per_track)]
        detections.append(detections_table([
            detection_row(f"{video_id}:{frame:07d}:000", video_id, camera, frame, T0 + offset + frame, (0, 0, 32, 64),
                          MODEL_ID, scores[f], track_id=track, thumbnail=_jpeg(20 * t + 40 * f))
            for f, frame in enumerate(frames)], embeddings))
        stored = None if track == NO_STORED_THUMBNAIL else _jpeg(200)
        tracklets.append(tracklet_row(track, video_id, camera, T0 + offset + frames[0], T0 + offset + frames[-1],
                                      per_track, f"{video_id}:{frames[0]:07d}:000", stored, MODEL_ID))
        aggregated.append(aggregate(embeddings))
    store.write_video(video, pa.concat_tables(detections), tracklets_table(tracklets, ReIDEmbeddings.concat(aggregated)))


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A store of two cameras (cam-a: two videos, cam-b: one) with tracklets, and a camera whose only video failed."""
    path = tmp_path_factory.mktemp("browse") / "db"
    store = Store.open(path)
    rng = np.random.default_rng(0)
    for camera, video_id, offset, tracks, per_track in VIDEOS:
        _write_video(store, camera, video_id, offset, tracks, per_track, rng)
    store.record_failure(video_row("c1" * 16, "cam-c", start_time=T0), "cannot decode: moov atom not found")
    store.create_indexes()
    return path


def _table(capsys) -> list[list[str]]:
    """The lines of a printed table, header first, split into cells on runs of two or more spaces."""
    lines = capsys.readouterr().out.strip().splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines]


def _error_line(capsys) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_list_shows_every_camera_with_its_counts_and_first_and_last_detection(db, capsys):
    assert main(["list", "--db", str(db)]) == 0
    header, *rows = _table(capsys)
    assert header[:5] == ["camera", "videos", "failed", "detections", "tracklets"]
    assert rows == [["cam-a", "2", "0", "10", "3", "2026-01-01 08:00:10", "2026-01-01 09:00:13"],
                    ["cam-b", "1", "0", "6", "3", "2026-01-01 08:10:10", "2026-01-01 08:10:31"],
                    ["cam-c", "0", "1", "0", "0", "-", "-"]]


def test_filters_keep_one_camera_and_a_time_window(db, capsys):
    assert main(["list", "--db", str(db), "tracklets", "--camera", "cam-b"]) == 0
    header, *rows, hint = _table(capsys)
    assert header[0] == "tracklet" and [row[:2] for row in rows] == [[f"b1b1b1b1b1b1-t{t}", "cam-b"] for t in (1, 2, 3)]
    assert hint[0].startswith("search with one: kpr search --db") and "--tracklet" in hint[0]
    # The second hour: only cam-a's second video, in every listing.
    window = ["--since", "2026-01-01T08:30", "--until", "2026-01-01T10:00"]
    assert main(["list", "--db", str(db), *window]) == 0
    assert [row[:5] for row in _table(capsys)[1:]] == [["cam-a", "1", "0", "4", "1"], ["cam-b", "0", "0", "0", "0"],
                                                       ["cam-c", "0", "0", "0", "0"]]
    assert main(["list", "--db", str(db), "videos", *window]) == 0
    assert [row[:2] for row in _table(capsys)[1:]] == [["a2a2a2a2a2a2", "cam-a"]]
    assert main(["list", "--db", str(db), "--min-detections", "7"]) == 0
    assert [row[0] for row in _table(capsys)[1:]] == ["cam-a"]


def test_a_page_says_how_many_more_there_are(db, capsys):
    assert main(["list", "--db", str(db), "tracklets", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + 2 + 2 and lines[3] == "4 more tracklets: use --offset 2 or a larger --limit"
    assert main(["list", "--db", str(db), "tracklets", "--limit", "2", "--offset", "4"]) == 0
    assert "more" not in capsys.readouterr().out


def test_thumbnails_are_written_as_jpeg_files_named_by_tracklet(db, tmp_path, capsys):
    folder = tmp_path / "thumbs"
    assert main(["list", "--db", str(db), "tracklets", "--camera", "cam-b", "--thumbnails", str(folder)]) == 0
    assert "wrote 3 thumbnail(s)" in capsys.readouterr().err
    files = sorted(p.name for p in folder.iterdir())
    assert files == [f"b1b1b1b1b1b1-t{t}.jpg" for t in (1, 2, 3)]
    for name in files:
        assert cv2.imdecode(np.frombuffer((folder / name).read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None
    assert (folder / "b1b1b1b1b1b1-t1.jpg").read_bytes() == _jpeg(200)  # the tracklet's stored thumbnail
    assert (folder / f"{NO_STORED_THUMBNAIL}.jpg").read_bytes() == _jpeg(20 * 2 + 40 * BEST_FRAME)


def test_json_rows_are_machine_readable(db, tmp_path, capsys):
    assert main(["list", "--db", str(db), "videos", "--status", "failed", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert (listing["listing"], listing["total"], listing["remaining"]) == ("videos", 1, 0)
    (row,) = listing["rows"]
    assert (row["camera_id"], row["status"], row["start_time_utc"]) == ("cam-c", "failed", "2026-01-01T08:00:00Z")
    assert "moov atom" in row["error"]
    assert main(["list", "--db", str(db), "tracklets", "--limit", "1", "--json", "--thumbnails", str(tmp_path)]) == 0
    listing = json.loads(capsys.readouterr().out)
    (row,) = listing["rows"]
    assert (listing["total"], row["track_id"], row["detections"]) == (6, "a1a1a1a1a1a1-t1", 3)
    assert Path(row["thumbnail"]).is_file() and row["t_end_utc"] == "2026-01-01T08:00:12Z"


def test_info_summarizes_the_store(db, capsys):
    assert main(["info", "--db", str(db)]) == 0
    text = capsys.readouterr().out
    for expected in (f"model:       {MODEL_ID} (kpr, K={PARTS} parts, D={DIM})",
                     "rows:        detections 16, tracklets 6, videos 4", "cameras:     3: cam-a, cam-b, cam-c",
                     "videos:      3 done, 1 failed", "2026-01-01 08:00:10 .. 2026-01-01 09:00:13 UTC",
                     "detections.camera_id", "local folder"):
        assert expected in text, expected
    assert main(["info", "--db", str(db), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tables"]["detections"]["rows"] == 16 and info["videos_by_status"] == {"done": 3, "failed": 1}
    assert info["indexes"]["detections.timestamp"]["indexed_rows"] == 16 and info["disk_bytes"] > 0
    assert info["time_range_utc"] == ["2026-01-01T08:00:10Z", "2026-01-01T09:00:13Z"]


def test_a_tracklet_listed_from_a_store_without_a_tracklets_table_is_searchable(tmp_path, capsys):
    path = tmp_path / "db"
    build_store(path)  # detections with track ids, no tracklets table
    assert main(["list", "--db", str(path), "tracklets", "--camera", "cam1", "--json", "--thumbnails",
                 str(tmp_path / "t")]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 6 and all(row["detections"] == 3 and Path(row["thumbnail"]).is_file() for row in rows)
    assert main(["search", "--db", str(path), "--tracklet", rows[0]["track_id"], "-k", "3"]) == 0


@pytest.mark.parametrize("args, expected", [
    (["list", "--db", "{missing}"], "kpr list: error: no store at"),
    (["info", "--db", "{missing}"], "kpr info: error: no store at"),
    (["list", "--db", "{db}", "--camera", "cam-z"], "unknown camera 'cam-z' (known: cam-a, cam-b, cam-c)"),
    (["list", "--db", "{db}", "--since", "monday"], "not a time: 'monday'"),
    (["list", "--db", "{db}", "--since", "2026-01-02", "--until", "2026-01-01"], "is after --until"),
    (["list", "--db", "{db}", "tracklets", "--status", "failed"], "--status goes with `kpr list videos`"),
    (["list", "--db", "{db}", "--thumbnails", "{missing}"], "--thumbnails goes with `kpr list tracklets`"),
    (["list", "--db", "{db}", "--limit", "0"], "must be > 0"),
])
def test_mistakes_are_one_line_and_exit_2(db, tmp_path, capsys, args, expected):
    names = {"db": str(db), "missing": str(tmp_path / "nothing")}
    assert main([a.format(**names) for a in args]) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "nothing").exists()


def test_an_empty_store_says_so(tmp_path, capsys):
    Store.open(tmp_path / "db")
    for command in (["list", "tracklets"], ["info"]):
        assert main([*command, "--db", str(tmp_path / "db")]) == 0
        assert capsys.readouterr().out.strip().endswith("is empty: nothing was ingested into it yet")


@pytest.mark.parametrize("command, option", [("list", "--thumbnails"), ("info", "--json")])
def test_each_browse_command_has_its_own_help(command, option, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: kpr {command} ") and option in text
