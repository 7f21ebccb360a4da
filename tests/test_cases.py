"""Cases: `kpr search --case`, `kpr case list|show|note|mark|export` on a real LanceDB store over real video files."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from test_search import build_store

from kpr_model.checkpoint_files import read_model_id
from kpr_model.config import KPRConfig
from kpr_model.embeddings import ReIDEmbeddings, aggregate
from pipelines.cli import main
from storage import SCHEMA_VERSION, Store, detection_row, detections_table, tracklet_row, tracklets_table
from storage.cases import Cases
from support import MODEL_ID, unit_rows, write_video
from workers.crops import thumbnail_jpeg
from workers.errors import DecodeError
from workers.frames import BOX_RGB, frame_with_box, frames_with_boxes

PARTS, DIM = 4, 16
T0 = 1_767_254_400.0  # 2026-01-01T08:00:00Z
FRAME_SIZE = (160, 120)  # width, height
BOX = (40.0, 20.0, 50.0, 80.0)  # x, y, w, h
PEOPLE = 3
CAMERAS = ("cam-a", "cam-b", "cam-c")
GONE_CAMERA = "cam-c"  # its video file is deleted after ingestion: its frames cannot be shown any more
QUERY_TRACK = "va-p0"


def _det_id(video_id: str, frame: int) -> str:
    return f"{video_id}:{frame:07d}:000"


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """Three cameras, one real video each, each showing the same three people as tracklets of three detections."""
    root = tmp_path_factory.mktemp("cases")
    rng = np.random.default_rng(0)
    people = unit_rows(rng.standard_normal((PEOPLE, PARTS, DIM)))
    store = Store.open(root / "db")
    for c, camera in enumerate(CAMERAS):
        video_id, path = f"v{camera[-1]}", root / f"{camera}.mp4"
        write_video(path, frames=30, size=FRAME_SIZE)
        detections, tracklets, aggregated = [], [], []
        for person in range(PEOPLE):
            parts = unit_rows(people[person] + 0.05 * rng.standard_normal((3, PARTS, DIM)))
            embeddings = ReIDEmbeddings(unit_rows(parts.mean(axis=1)), parts, np.ones((3, PARTS), np.float32))
            frames = [8 * person + f for f in range(3)]
            thumb = thumbnail_jpeg(np.full((64, 32, 3), 60 * person + 30, np.uint8))
            track = f"{video_id}-p{person}"
            detections.append(detections_table([
                detection_row(_det_id(video_id, frame), video_id, camera, frame, T0 + 600 * c + frame, BOX, MODEL_ID,
                              0.9, track_id=track, thumbnail=thumb) for frame in frames], embeddings))
            tracklets.append(tracklet_row(track, video_id, camera, T0 + 600 * c + frames[0], T0 + 600 * c + frames[-1],
                                          3, _det_id(video_id, frames[0]), thumb, MODEL_ID))
            aggregated.append(aggregate(embeddings))
        video = {"video_id": video_id, "uri": str(path), "camera_id": camera, "start_time": T0 + 600 * c,
                 "duration": 3.0, "num_frames": 30, "model_id": MODEL_ID}
        store.write_video(video, pa.concat_tables(detections), tracklets_table(tracklets, ReIDEmbeddings.concat(aggregated)))
    (root / f"{GONE_CAMERA}.mp4").unlink()
    return root / "db"


def _error_line(capsys) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _search(db: Path, case: str, capsys, *query: str) -> tuple[list[str], str]:
    """Run kpr search with --case; the detection ids it printed, best first, and its stderr."""
    assert main(["search", "--db", str(db), *query, "-k", "2", "--case", case]) == 0
    out, err = capsys.readouterr()
    rows = [line.split() for line in out.strip().splitlines()[1:] if not line.startswith("----")]
    return [row[-2] for row in rows], err


def test_search_with_case_records_the_query_and_the_results_shown(db, capsys):
    shown, err = _search(db, "lobby", capsys, "--tracklet", QUERY_TRACK)
    assert "created case 'lobby'" in err
    assert len(shown) == 2 and all(not i.startswith("va:") for i in shown)
    again, err = _search(db, "lobby", capsys, "--detection", _det_id("vb", 8), "--camera", "cam-a")
    assert "recorded in case 'lobby'" in err
    events = Cases.open(str(db)).events("lobby")
    assert [e.kind for e in events] == ["query", "results", "query", "results"]
    assert events[0].payload["track_id"] == QUERY_TRACK and events[0].payload["k"] == 2
    assert events[2].payload["detection_id"] == _det_id("vb", 8) and events[2].payload["cameras"] == ["cam-a"]
    assert [h["detection_id"] for h in events[1].payload["hits"]] == shown
    assert [h["detection_id"] for h in events[3].payload["hits"]] == again
    assert all(h["camera_id"] == "cam-a" and h["frame_index"] in range(8, 11) for h in events[3].payload["hits"][:1])
    assert events[0].user and events[0].host


def test_case_list_show_note_and_mark(db, capsys):
    _search(db, "desk", capsys, "--tracklet", "vb-p2")
    first = Cases.open(str(db)).events("desk")[1].payload["hits"]
    assert main(["case", "mark", "desk", "--db", str(db), "--same", first[0]["detection_id"],
                 "--not", first[1]["detection_id"]]) == 0
    assert main(["case", "note", "desk", "--db", str(db), "seen at the desk twice"]) == 0
    again, _ = _search(db, "desk", capsys, "--tracklet", "vb-p2", "--same", first[0]["detection_id"],
                       "--not", first[1]["detection_id"])
    assert [e.kind for e in Cases.open(str(db)).events("desk")][-3:] == ["marks", "query", "results"]
    assert not {h["detection_id"] for h in first} & set(again)
    assert main(["case", "list", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "case"
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["desk"][-3:] == ["2", "2", "1"] and rows["lobby"][-3:] == ["2", "0", "0"]
    assert main(["case", "show", "desk", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "tracklet vb-p2; k=2" in out and "results  2 people, top 2:" in out
    for hit in first:
        assert any(hit["detection_id"] in line and hit["camera_id"] in line and "2026-01-01 08:" in line
                   for line in out.splitlines())
    assert f"same person: {first[0]['detection_id']}; not this person: {first[1]['detection_id']}" in out
    assert "note     seen at the desk twice" in out and "tracklet vb-p2; k=2; feedback: 1 same, 1 not" in out


def test_unknown_case_and_bad_marks_are_one_line(db, capsys):
    assert main(["case", "show", "no-such-case", "--db", str(db)]) == 2
    assert _error_line(capsys).startswith("kpr case: error: no case named 'no-such-case'")
    assert main(["case", "note", "no-such-case", "--db", str(db), "text"]) == 2
    assert "no case named" in _error_line(capsys)
    assert main(["case", "export", "no-such-case", "--db", str(db), "--out", str(db.parent / "x")]) == 2
    assert "no case named" in _error_line(capsys) and not (db.parent / "x").exists()
    _search(db, "marked", capsys, "--tracklet", QUERY_TRACK)
    assert main(["case", "mark", "marked", "--db", str(db), "--same", "nope:1"]) == 2
    assert "unknown detection id 'nope:1'" in _error_line(capsys)


def _box_is_drawn(jpeg: bytes) -> bool:
    """Whether a decoded frame has the full video size and the box's colour along the box's left edge."""
    frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    x, y, w, h = (int(v) for v in BOX)
    edge = frame[y + 5 : y + h - 5, x].astype(int)
    return frame.shape[:2] == FRAME_SIZE[::-1] and bool(np.all(np.abs(edge - BOX_RGB) < 60))


def test_export_writes_a_bundle_with_hashes_frames_and_provenance(db, tmp_path, capsys):
    _search(db, "export", capsys, "--tracklet", QUERY_TRACK)
    _search(db, "export", capsys, "--tracklet", "vc-p1", "--detections")
    assert main(["case", "export", "export", "--db", str(db), "--out", str(tmp_path / "bundle")]) == 0
    assert "bundle/index.html" in capsys.readouterr().out
    bundle = tmp_path / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest) == on_disk and {"index.html", "case.json"} <= on_disk
    assert all(hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest for name, digest in manifest.items())
    case = json.loads((bundle / "case.json").read_text())
    page = (bundle / "index.html").read_text()
    results = [h for e in case["events"] if e["kind"] == "results" for h in e["payload"]["hits"]]
    assert len(results) == 4 and all(h["detection_id"] in page for h in results)
    for hit in results:
        evidence = case["evidence"][hit["detection_id"]]
        provenance = evidence["provenance"]
        assert provenance["frame_index"] == hit["frame_index"] and provenance["model_id"] == MODEL_ID
        assert provenance["video_uri"].endswith(f"{hit['camera_id']}.mp4") and provenance["store_schema_version"] == SCHEMA_VERSION
        assert evidence["thumbnail"] and (bundle / evidence["thumbnail"]).is_file()
        if hit["camera_id"] == GONE_CAMERA:
            assert evidence["frame"] is None and "cannot be read" in evidence["problems"][0]
        else:
            assert _box_is_drawn((bundle / evidence["frame"]).read_bytes())
    assert any(h["camera_id"] == GONE_CAMERA for h in results) and any(h["camera_id"] != GONE_CAMERA for h in results)
    assert "the frame cannot be read from the archived video" in page and f"{GONE_CAMERA}.mp4" in page
    assert main(["case", "export", "export", "--db", str(db), "--out", str(bundle)]) == 2
    assert "not an empty folder" in _error_line(capsys)


def test_frame_with_box_of_a_missing_video_is_a_decode_error(db):
    with pytest.raises(DecodeError, match="no such file"):
        frame_with_box(str(db.parent / f"{GONE_CAMERA}.mp4"), 0, BOX)
    with pytest.raises(DecodeError, match="has no frame 99"):
        frame_with_box(str(db.parent / "cam-a.mp4"), 99, BOX)


def test_frames_of_one_video_come_from_one_pass_each_with_its_own_box_or_error(db):
    first, missing, again = frames_with_boxes(str(db.parent / "cam-a.mp4"), [(2, BOX), (99, BOX), (0, BOX)])
    assert _box_is_drawn(first) and _box_is_drawn(again) and first != again
    assert isinstance(missing, DecodeError) and "has no frame 99" in str(missing)
    gone = frames_with_boxes(str(db.parent / f"{GONE_CAMERA}.mp4"), [(0, BOX), (1, BOX)])
    assert all(isinstance(result, DecodeError) and "no such file" in str(result) for result in gone)


_APPEND = """
import sys
from storage.cases import Cases
cases = Cases.open(sys.argv[1])
for i in range(10):
    cases.append("shared", [("note", {"text": f"{sys.argv[2]} {i}"})])
"""


def test_two_processes_appending_to_one_case_both_land(db):
    root = Path(__file__).resolve().parents[1]
    writers = [subprocess.Popen([sys.executable, "-c", _APPEND, str(db), name], cwd=root) for name in ("one", "two")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    texts = [e.payload["text"] for e in Cases.open(str(db)).events("shared")]
    assert sorted(texts) == sorted(f"{name} {i}" for name in ("one", "two") for i in range(10))
    assert [t for t in texts if t.startswith("one")] == [f"one {i}" for i in range(10)]


def test_image_query_is_kept_with_its_picture_and_prompt_and_a_lost_detection_keeps_its_record(
        db, tiny_checkpoint, tmp_path, capsys):
    store_path = tmp_path / "db"
    build_store(store_path, dim=KPRConfig.tiny().embed_dim, model_id=read_model_id(tiny_checkpoint))
    crop, prompt = tmp_path / "q.png", tmp_path / "kp.json"
    cv2.imwrite(str(crop), np.full((64, 32, 3), 120, np.uint8))
    prompt.write_text(json.dumps({"positive": [{"joint": "left_ankle", "x": 12, "y": 60}]}))
    assert main(["search", "--db", str(store_path), "--image", str(crop), "--model", str(tiny_checkpoint),
                 "--keypoints", str(prompt), "-k", "2", "--case", "upload"]) == 0
    query = Cases.open(str(store_path)).events("upload")[0].payload
    assert query["image"] == {"file": str(crop), "sha256": hashlib.sha256(crop.read_bytes()).hexdigest(),
                              "bytes": crop.stat().st_size}
    assert query["prompt"]["positive"][15][:2] == [12.0, 60.0]
    assert main(["case", "export", "upload", "--db", str(store_path), "--out", str(tmp_path / "b")]) == 0
    case = json.loads((tmp_path / "b" / "case.json").read_text())
    assert (tmp_path / "b" / case["query_pictures"][case["events"][0]["event_id"]]).is_file()
    assert all(e["frame"] is None and "no such file" in e["problems"][0] for e in case["evidence"].values())

    gone = {"rank": 1, "detection_id": "va:0000099:000", "track_id": None, "video_id": "va", "camera_id": "cam-a",
            "frame_index": 5, "timestamp": T0 + 5, "bbox": list(BOX), "distance": 0.5}
    Cases.open(str(db)).append("lost", [("results", {"by": "detection", "model_id": MODEL_ID, "hits": [gone]})])
    assert main(["case", "export", "lost", "--db", str(db), "--out", str(tmp_path / "lost")]) == 0
    evidence = json.loads((tmp_path / "lost" / "case.json").read_text())["evidence"][gone["detection_id"]]
    assert evidence["problems"] == ["the detection is no longer in the store"]
    assert evidence["provenance"]["model_id"] == MODEL_ID and evidence["thumbnail"] is None
    assert _box_is_drawn((tmp_path / "lost" / evidence["frame"]).read_bytes())


def test_maintain_compacts_the_cases_table_and_keeps_every_event(tmp_path):
    store = Store.open(tmp_path / "db")
    store.write_video({"video_id": "v0", "uri": "v0.mp4", "camera_id": "cam-a", "model_id": MODEL_ID}, None, None)
    cases = Cases.open(str(tmp_path / "db"))
    for i in range(12):  # one append (a version and a fragment) per event
        cases.append("lobby", [("note", {"text": f"note {i}"})])
    report = store.maintain(cleanup_older_than=None)
    stats = Store.open(tmp_path / "db", create=False).table_stats()["cases"]
    assert stats["fragments"] == 1 and stats["rows"] == 12
    assert "cases.case_id" in report["indexes"]
    assert [e.payload["text"] for e in Cases.open(str(tmp_path / "db")).events("lobby")] == [f"note {i}" for i in range(12)]
