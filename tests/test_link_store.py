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


def _looks() -> np.ndarray:
    """Each person's part embeddings (person 1 looks like person 0)."""
    rng = np.random.default_rng(5)
    base = unit_rows(rng.standard_normal((3, K, D)))
    base[1] = unit_rows(base[0] + 0.05 * rng.standard_normal((K, D)))
    return base


def _write_passage(store: Store, index: int, camera: str, person: int, start: float) -> None:
    """One video of one passage: 3 detections of ``person``, one tracklet."""
    rng = np.random.default_rng(index)
    video_id, track_id = f"{camera}-{index}", f"{camera}-{index}:t0"
    parts = unit_rows(_looks()[person][None] + 0.02 * rng.standard_normal((3, K, D)))
    shown = ReIDEmbeddings(unit_rows(parts.mean(axis=1)), parts, np.ones((3, K), np.float32))
    ids = [f"{video_id}:{i}" for i in range(3)]
    rows = [detection_row(ids[i], video_id, camera, i, start + i, [0, 0, 32, 64], MODEL_ID, track_id=track_id,
                          thumbnail=bytes([index])) for i in range(3)]
    tracklet = tracklet_row(track_id, video_id, camera, start, start + 2, 3, ids[0], bytes([index]), MODEL_ID)
    video = {"video_id": video_id, "uri": f"/archive/{video_id}.mp4", "camera_id": camera, "model_id": MODEL_ID}
    store.write_video(video, detections_table(rows, shown), tracklets_table([tracklet], aggregate(shown)))


def _build_store(path) -> None:
    """One video per passage."""
    store = Store.open(str(path))
    for index, (camera, person, start) in enumerate(PASSAGES):
        _write_passage(store, index, camera, person, start)


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


def test_new_videos_join_existing_identities_and_hand_edits_outlive_a_full_relink(tmp_path, capsys):
    db, cameras = tmp_path / "store", tmp_path / "cameras.yaml"
    _build_store(db)
    cameras.write_text(CAMERAS_FILE)
    link = ["link", "--db", str(db), "--cameras", str(cameras), "--threshold", "0.5"]
    assert main(link) == 0
    walker = Identities.open(str(db)).rows()[0]["identity_id"]
    # A new video of person 0 on the north camera, 10 minutes later: only it is linked, into the walker's identity.
    _write_passage(Store.open(str(db), create=False), 4, "north", 0, T0 + 600.0)
    capsys.readouterr()
    assert main(link) == 0
    out = capsys.readouterr().out
    assert "incremental run" in out and "linked 1 of 5 tracklets" in out and "0 new, 1 relinked, 2 unchanged" in out
    identities = Identities.open(str(db))
    assert _people(db)[0] == ["north-0:t0", "lobby-1:t0", "north-4:t0"]
    assert json.loads(identities.get(walker)["history"])[-1] | {"at": 0, "run_id": ""} == {
        "change": "relinked", "at": 0, "run_id": "", "tracklets": 3, "joined": 1, "left": 0}

    # By hand: the lobby sighting is someone else; person 2 is the walker after all.
    assert main(["identity", "split", "--db", str(db), walker, "--tracklet", "lobby-1:t0", "--note", "other coat"]) == 0
    assert f"split 1 tracklet(s) off {walker} into person-" in capsys.readouterr().out
    other = identities.of_tracklets(["north-3:t0"])["north-3:t0"]
    assert main(["identity", "merge", "--db", str(db), walker, other]) == 0
    assert sorted(map(sorted, _people(db))) == [["lobby-1:t0"], ["lobby-2:t0"], ["north-0:t0", "north-3:t0",
                                                                                 "north-4:t0"]]
    # A full relink keeps the merge and the split (the split-off sighting now goes with its look-alike, person 1),
    # and the walker's id.
    assert main([*link, "--full"]) == 0
    assert "full run (asked (--full))" in capsys.readouterr().out
    assert sorted(map(sorted, _people(db))) == [["lobby-1:t0", "lobby-2:t0"], ["north-0:t0", "north-3:t0",
                                                                               "north-4:t0"]]
    assert identities.of_tracklets(["north-3:t0"]) == {"north-3:t0": walker}
    assert main(["identity", "show", "--db", str(db), walker]) == 0
    shown = capsys.readouterr().out
    assert "split, part into person-" in shown and f"merged from {other}" in shown and "other coat" in shown
    # The store's upkeep (kpr maintain, and the end of every kpr ingest) takes the identities tables in its stride.
    people = _people(db)
    assert main(["maintain", "--db", str(db)]) == 0
    assert "identities.identity_id: action=created" in capsys.readouterr().out and _people(db) == people


@pytest.mark.parametrize("edit, message", [
    (["merge", "person-0000000000000000", "IDENTITY"], "no identity 'person-0000000000000000'"),
    (["merge", "IDENTITY", "IDENTITY"], "a merge needs at least two different identities"),
    (["split", "IDENTITY", "--tracklet", "north-3:t0"], "tracklet 'north-3:t0' is not in identity"),
    (["split", "IDENTITY", "--tracklet", "north-0:t0", "--tracklet", "lobby-1:t0"], "some but not all"),
])
def test_a_hand_edit_that_cannot_be_made_is_one_line_and_writes_nothing(tmp_path, capsys, edit, message):
    db = tmp_path / "store"
    _build_store(db)
    (tmp_path / "cameras.yaml").write_text(CAMERAS_FILE)
    assert main(["link", "--db", str(db), "--cameras", str(tmp_path / "cameras.yaml"), "--threshold", "0.5"]) == 0
    identities = Identities.open(str(db))
    before = identities.rows()
    walker = before[0]["identity_id"]
    capsys.readouterr()
    command = ["identity", edit[0], "--db", str(db), *[walker if word == "IDENTITY" else word for word in edit[1:]]]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("kpr identity: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert identities.rows() == before and identities.edits() == []
