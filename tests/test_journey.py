"""kpr journey: a person's sightings across cameras in time order, the transits checked against the cameras file, and
the HTML page (lanes, thumbnails, map), on a real LanceDB store."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from kpr_model.embeddings import ReIDEmbeddings, aggregate
from pipelines.calibrate import NO_CLOSE_MATCH
from pipelines.cli import main
from pipelines.store_cameras import remember_cameras
from storage import Store, detection_row, detections_table, tracklet_row, tracklets_table
from support import MODEL_ID, unit_rows
from workers.cameras import read_cameras
from workers.crops import thumbnail_jpeg
from workers.records import detection_id

PARTS, DIM = 4, 16
T0 = 1_767_254_400.0  # 2026-01-01T08:00:00Z
# (track id or None, person, camera, first second after T0, last second): person 0 walks a -> b (60 s, usual 45 s:
# plausible) -> c (5 s, usual 40 s given the other way: too fast), and d sees them while c still does (impossible);
# a detection of no tracklet sees them on a again later; person 1 passes b and c.
PASSAGES = [("a-p0", 0, "cam-a", 0, 10), ("b-p0", 0, "cam-b", 70, 80), ("c-p0", 0, "cam-c", 85, 95),
            ("d-p0", 0, "cam-d", 90, 100), (None, 0, "cam-a", 200, 200), ("b-p1", 1, "cam-b", 300, 310),
            ("c-p1", 1, "cam-c", 400, 410)]
CAMERAS_FILE = """\
cameras:
  cam-a: {name: North gate, timezone: Europe/Paris, connects_to: {cam-b: 45}}
  cam-b: {name: Lobby, timezone: Europe/Paris}
  cam-c: {name: Car park, connects_to: {cam-b: 40}}
  cam-d: {name: Back door}
"""
POSITIONS = {"cam-a": "[0, 0]", "cam-b": "[40, 10]", "cam-c": "[30, 60]", "cam-d": "[-20, 40]"}


def _det_id(index: int, frame: int) -> str:
    """The id of detection ``frame`` of passage ``index`` (its video is v<index>)."""
    return detection_id(f"v{index}", frame, 0)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """One video per passage; each tracklet has its detections every 5 s and its own thumbnail colour."""
    root = tmp_path_factory.mktemp("journey")
    rng = np.random.default_rng(3)
    people = unit_rows(rng.standard_normal((2, PARTS, DIM)))
    store = Store.open(root / "db")
    for index, (track, person, camera, first, last) in enumerate(PASSAGES):
        video_id, seconds = f"v{index}", np.arange(first, last + 1, 5)
        parts = unit_rows(people[person] + 0.03 * rng.standard_normal((len(seconds), PARTS, DIM)))
        embeddings = ReIDEmbeddings(unit_rows(parts.mean(axis=1)), parts, np.ones((len(seconds), PARTS), np.float32))
        thumb = thumbnail_jpeg(np.full((64, 32, 3), (30 * index, 200 - 25 * index, 90), np.uint8))
        ids = [_det_id(index, i) for i in range(len(seconds))]
        rows = [detection_row(ids[i], video_id, camera, i, T0 + float(s), (0, 0, 32, 64), MODEL_ID, 0.9,
                              track_id=track, thumbnail=thumb) for i, s in enumerate(seconds)]
        tracklets = None if track is None else tracklets_table(
            [tracklet_row(track, video_id, camera, T0 + first, T0 + last, len(ids), ids[0], thumb, MODEL_ID)],
            aggregate(embeddings))
        video = {"video_id": video_id, "uri": f"/archive/{video_id}.mp4", "camera_id": camera, "model_id": MODEL_ID}
        store.write_video(video, detections_table(rows, embeddings), tracklets)
    return root / "db"


@pytest.fixture
def cameras_file(tmp_path) -> Path:
    path = tmp_path / "cameras.yaml"
    path.write_text(CAMERAS_FILE)
    return path


def _journey(capsys, *args: str) -> dict:
    """kpr journey --json with ``args``: the journey it printed."""
    assert main(["journey", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_confirmed_sightings_come_in_time_order_with_their_transits_checked(store_dir, cameras_file, capsys):
    journey = _journey(capsys, "--db", str(store_dir), "--tracklet", "a-p0", "--cameras", str(cameras_file),
                       "--same", "d-p0", "--same", _det_id(2, 1), "--same", "b-p0", "--same", _det_id(4, 0))
    sightings = journey["sightings"]
    assert [s["track_id"] for s in sightings] == ["a-p0", "b-p0", "c-p0", "d-p0", None]
    assert sightings[4]["best_detection_id"] == _det_id(4, 0)  # a detection of no tracklet is its own sighting
    assert [s["query"] for s in sightings] == [True, False, False, False, False]
    assert [s["camera_name"] for s in sightings] == ["North gate", "Lobby", "Car park", "Back door", "North gate"]
    assert sightings[0]["start_utc"] == "2026-01-01T08:00:00Z"
    assert sightings[0]["local"] == "2026-01-01 09:00:00..09:00:10 CET"
    transits = [(t["gap_s"], t["usual_s"], t["verdict"], t["flagged"]) for t in journey["transits"]]
    assert transits == [(60.0, 45.0, "plausible", False),
                        (5.0, 40.0, "suspicious: faster than the usual transit", True),
                        (-5.0, None, "impossible: seen on both cameras at once", True),
                        (100.0, None, "no usual transit time", False)]
    assert journey["conflicts"] == [{"first": 3, "second": 4}]


def test_the_cameras_file_the_store_recorded_is_used_unless_another_is_given(store_dir, cameras_file, tmp_path,
                                                                           capsys):
    def names(*args: str) -> list[str]:
        journey = _journey(capsys, "--db", str(store_dir), "--tracklet", "a-p0", "--same", "b-p0", *args)
        return [s["camera_name"] for s in journey["sightings"]]

    assert names() == ["cam-a", "cam-b"]  # nothing recorded: camera ids
    assert remember_cameras(Store.open(str(store_dir), create=False), read_cameras(cameras_file))
    assert not remember_cameras(Store.open(str(store_dir), create=False), read_cameras(cameras_file))  # same file
    assert names() == ["North gate", "Lobby"]
    other = tmp_path / "other.yaml"
    other.write_text("cameras:\n  cam-a: {name: Front}\n")
    assert names("--cameras", str(other)) == ["Front", "cam-b"]


def test_the_text_timeline_marks_the_flagged_transits(store_dir, cameras_file, capsys):
    assert main(["journey", "--db", str(store_dir), "--tracklet", "a-p0", "--cameras", str(cameras_file),
                 "--same", "b-p0", "--same", "c-p0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("journey of a-p0: 3 sighting(s) on 3 camera(s)")
    assert "North gate (cam-a)" in lines[1] and "09:00:00..09:00:10 CET = 2026-01-01 08:00:00..08:00:10 UTC" in lines[1]
    assert "-> 1 min 00 s, usual 45 s: plausible" in lines[2] and "!!" not in lines[2]
    assert lines[4].lstrip().startswith("!!") and "5.0 s, usual 40 s: suspicious" in lines[4]
    assert "Car park (cam-c)" in lines[5] and len(lines) == 6


@pytest.mark.parametrize("kind", ["kpr", "global"])
def test_without_marks_the_calibrated_hits_are_the_journey(store_dir, capsys, kind):
    """The hits within the distance calibrated for what the store's model searches by (the cosine of the global
    vectors for a global model): the other person's tracklets are not among them."""
    store = Store.open(store_dir, create=False)
    model = store.model()
    store.set_model({**model, "kind": kind})
    try:
        journey = _journey(capsys, "--db", str(store_dir), "--tracklet", "a-p0")
        assert [s["track_id"] for s in journey["sightings"]] == ["a-p0"] and "not calibrated" in journey["chosen"]
        store.set_model({**model, "kind": kind, NO_CLOSE_MATCH: {kind: {"distance": 0.3}}})
        journey = _journey(capsys, "--db", str(store_dir), "--tracklet", "a-p0")
    finally:
        store.set_model(model)
    assert [s["track_id"] for s in journey["sightings"]] == ["a-p0", "b-p0", "c-p0", "d-p0", None]
    assert "calibrated" in journey["chosen"]


def _page(store_dir: Path, tmp_path: Path, cameras_file: Path) -> str:
    page = tmp_path / "journey.html"
    assert main(["journey", "--db", str(store_dir), "--tracklet", "a-p0", "--cameras", str(cameras_file),
                 "--same", "b-p0", "--same", "c-p0", "--same", "d-p0", "--same", _det_id(4, 0),
                 "--html", str(page)]) == 0
    return page.read_text()


def test_the_page_has_one_lane_per_camera_every_thumbnail_and_no_map_without_positions(store_dir, tmp_path,
                                                                                         cameras_file):
    text = _page(store_dir, tmp_path, cameras_file)
    assert re.findall(r"class='lane' data-camera='([^']+)'", text) == ["cam-a", "cam-b", "cam-c", "cam-d"]
    assert re.findall(r"class='sighting query' data-key='([^']+)'", text) == ["a-p0"]
    assert re.findall(r"class='sighting conflict' data-key='([^']+)'", text) == ["c-p0", "d-p0"]
    assert "Seen on two cameras at the same time (one of each pair is someone else): #3 and #4." in text
    store = Store.open(store_dir, create=False)
    for index in (0, 1, 2, 3, 4):
        thumbnail = store.get_detection(_det_id(index, 0), ["thumbnail"])["thumbnail"]
        assert text.count(base64.b64encode(thumbnail).decode()) == 1
    verdicts = re.findall(r"class='transit' data-verdict='([^']+)'", text)
    assert verdicts == ["plausible", "suspicious: faster than the usual transit",
                        "impossible: seen on both cameras at once", "no usual transit time"]
    assert "class='map'" not in text and "Camera map" not in text
    assert "src=" not in text.replace("data:image/jpeg", "") and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", "")  # self-contained


def test_the_page_draws_the_camera_map_when_the_file_gives_positions(store_dir, tmp_path, cameras_file):
    cameras_file.write_text("".join(line.replace("{name:", f"{{position: {POSITIONS.get(line.split(':')[0].strip())}, "
                                                           "name:") for line in CAMERAS_FILE.splitlines(True)))
    text = _page(store_dir, tmp_path, cameras_file)
    assert "class='map'" in text
    assert re.findall(r"class='camera-point' data-camera='([^']+)'", text) == ["cam-a", "cam-b", "cam-c", "cam-d"]
    assert text.count("class='leg'") == 4  # a -> b -> c -> d -> a


@pytest.mark.parametrize("args, message", [
    (["--tracklet", "no-such-track"], "unknown tracklet or detection id 'no-such-track'"),
    (["--tracklet", "a-p0", "--same", "v9:0000000:000"], "unknown tracklet or detection id 'v9:0000000:000'"),
    (["--tracklet", "a-p0", "--cameras", "missing.yaml"], "missing.yaml"),
])
def test_a_bad_id_or_file_is_one_line(store_dir, capsys, args, message):
    assert main(["journey", "--db", str(store_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kpr journey: error: ") and message in err[0]


def test_a_missing_store_is_one_line(tmp_path, capsys):
    assert main(["journey", "--db", str(tmp_path / "none"), "--tracklet", "a-p0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no store" in err[0]


def test_help_names_every_option(capsys):
    assert main(["journey", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(option in text for option in ("--tracklet", "--same", "--cameras", "--html", "--json", "-k"))


def test_a_detection_stands_for_its_tracklet(store_dir, capsys):
    journey = _journey(capsys, "--db", str(store_dir), "--tracklet", _det_id(0, 1), "--same", _det_id(1, 2))
    assert [(s["track_id"], s["query"], s["detections"]) for s in journey["sightings"]] == [("a-p0", True, 3),
                                                                                           ("b-p0", False, 3)]
