"""`kpr link` on a tiny store: the flow (real Prefect run, local Ray, real LanceDB) writes the identities table once,
a re-run keeps the ids, the cameras file's transit window keeps apart two look-alikes, and bad input writes nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kpr_model.distance import ReIDEmbeddings, aggregate
from pipelines.cli import main
from pipelines.store_cameras import remember_cameras
from storage import Store, detection_row, detections_table, tracklet_row, tracklets_table
from storage.identities import Identities
from support import unit_rows
from workers.cameras import read_cameras

K, D = 4, 16
T0 = 1_767_225_600.0
MODEL_ID = "link-model"
# (camera, person, start): person 0 walks north -> lobby in 60 s; person 1, their look-alike, is on the lobby
# camera 10 s after person 0 left north, faster than anyone can get there; person 2 is someone else.
PASSAGES = [("north", 0, T0), ("lobby", 0, T0 + 70.0), ("lobby", 1, T0 + 20.0), ("north", 2, T0 + 300.0)]
CAMERAS_FILE = "cameras:\n  north:\n    connects_to: {lobby: [30, 120]}\n  lobby: {}\n"


def _build_store(path) -> None:
    """One video per passage (3 detections each, one tracklet), embeddings by person (1 looks like 0)."""
    rng = np.random.default_rng(5)
    base = unit_rows(rng.standard_normal((3, K, D)))
    base[1] = unit_rows(base[0] + 0.05 * rng.standard_normal((K, D)))
    store = Store.open(str(path))
    for index, (camera, person, start) in enumerate(PASSAGES):
        video_id, track_id = f"{camera}-{index}", f"{camera}-{index}:t0"
        parts = unit_rows(base[person][None] + 0.02 * rng.standard_normal((3, K, D)))
        shown = ReIDEmbeddings(unit_rows(parts.mean(axis=1)), parts, np.ones((3, K), np.float32))
        ids = [f"{video_id}:{i}" for i in range(3)]
        rows = [detection_row(ids[i], video_id, camera, i, start + i, [0, 0, 32, 64], MODEL_ID, track_id=track_id,
                              thumbnail=bytes([index])) for i in range(3)]
        tracklet = tracklet_row(track_id, video_id, camera, start, start + 2, 3, ids[0], bytes([index]), MODEL_ID)
        video = {"video_id": video_id, "uri": f"/archive/{video_id}.mp4", "camera_id": camera, "model_id": MODEL_ID}
        store.write_video(video, detections_table(rows, shown), tracklets_table([tracklet], aggregate(shown)))


def _people(db) -> list[list[str]]:
    return [[t["track_id"] for t in row["tracklets"]] for row in Identities.open(str(db)).rows()]


@pytest.fixture(scope="module")
def link_store(tmp_path_factory):
    db = tmp_path_factory.mktemp("link") / "store"
    _build_store(db)
    cameras = db.parent / "cameras.yaml"
    cameras.write_text(CAMERAS_FILE)
    return db, cameras


def test_kpr_link_writes_identities_and_a_rerun_keeps_their_ids(link_store, capsys):
    db, cameras = link_store
    assert main(["link", "--db", str(db), "--threshold", "0.5"]) == 0
    assert "4 tracklets -> 2 identities" in capsys.readouterr().out
    # Without the cameras file nothing keeps the look-alike on the lobby camera from joining person 0.
    assert sorted(map(len, _people(db))) == [1, 3]
    assert main(["link", "--db", str(db), "--cameras", str(cameras), "--threshold", "0.5"]) == 0
    rows = Identities.open(str(db)).rows()
    assert _people(db) == [["north-0:t0", "lobby-1:t0"], ["lobby-2:t0"], ["north-3:t0"]]
    walker = rows[0]
    assert [c["camera_id"] for c in walker["cameras"]] == ["north", "lobby"]
    assert walker["cameras"][1]["first_seen"] == T0 + 70.0 and walker["thumbnail"] in (b"\x00", b"\x01")
    assert walker["model_id"] == MODEL_ID and all(0 <= t["confidence"] <= 1 for t in walker["tracklets"])
    ids = [row["identity_id"] for row in rows]
    assert main(["link", "--db", str(db), "--cameras", str(cameras), "--threshold", "0.5"]) == 0
    again = Identities.open(str(db)).rows()
    assert [row["identity_id"] for row in again] == ids
    assert "0 new, 0 relinked, 3 unchanged, 0 removed" in capsys.readouterr().out
    # The walker's identity was created by the first run (with the look-alike) and relinked by the second.
    assert [event["change"] for event in json.loads(again[0]["history"])] == ["created", "relinked"]
    # A store that recorded the cameras file (as kpr ingest records it) is linked with it without --cameras.
    assert remember_cameras(Store.open(str(db), create=False), read_cameras(cameras))
    assert main(["link", "--db", str(db), "--threshold", "0.5"]) == 0
    assert "0 new, 0 relinked, 3 unchanged, 0 removed" in capsys.readouterr().out


@pytest.mark.parametrize("cameras, message", [
    ("cameras:\n  north:\n    connects_to: {lobby: [120, 30]}\n  lobby: {}\n",
     "impossible transit window to 'lobby': [120, 30]"),
    ("cameras: [north\n", "not valid YAML"),
])
def test_bad_cameras_file_is_one_line_and_writes_nothing(tmp_path, link_store, capsys, cameras, message):
    db = tmp_path / "store"
    _build_store(db)
    path = tmp_path / "cameras.yaml"
    path.write_text(cameras)
    assert main(["link", "--db", str(db), "--cameras", str(path), "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kpr link: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert Identities.open(str(db)).rows() == []


def test_a_store_without_tracklets_or_calibration_is_refused(tmp_path, link_store, capsys):
    empty = tmp_path / "empty"
    Store.open(str(empty))
    assert main(["link", "--db", str(empty), "--threshold", "0.5"]) == 2
    assert "holds no tracklets" in capsys.readouterr().err
    db, _ = link_store
    assert main(["link", "--db", str(db)]) == 2
    assert "not calibrated: give --threshold" in capsys.readouterr().err
