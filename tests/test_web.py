"""The `kpr serve` web API over a real LanceDB store built from the synthetic archive: queries and bad input."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import shutil
import socket
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from fastapi.testclient import TestClient

from kpr_model.checkpoint import save_checkpoint
from kpr_model.config import KPRConfig
from kpr_model.distance import aggregate
from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.keypoints import group_keypoint_indices
from kpr_model.model import KPR
from kpr_model.model_files import open_encoder
from pipelines.errors import UserError, user_error_types
from pipelines.web.app import create_app, is_loopback, serve
from pipelines.web.context import CLIP_FPS, CLIP_MAX_WIDTH, CLIP_SECONDS
from storage import RowsMovedError, Store, StoreError, detection_row, detections_table, tracklet_row, tracklets_table
from storage.schema import SCHEMA_VERSION
from support import png_bytes, unit_rows
from training.archive_truth import archive_truth
from workers.cameras import read_cameras
from workers.discover import discover_videos, list_video_files
from workers.video_job import extract_video_crops

UPLOAD_LIMIT = 256 * 1024


@dataclass
class WebStore:
    """A store of the archive's detections and who each detection really is."""

    db: Path
    identity: dict[str, str]
    camera: dict[str, str]
    track: dict[str, str]
    whole: set[str]


def prompt_aware_checkpoint(path: Path) -> Path:
    """A tiny seeded KPR whose prompt tokenizer has random weights, so keypoints change its embeddings.

    A fresh KPR starts its prompt tokenizer (the only all-zero conv kernel) at zero, as training
    does, and so ignores prompts until trained; this one stands for a trained model in that respect.
    """
    torch.manual_seed(0)
    config = KPRConfig.tiny()
    model = KPR(config).eval()
    for parameter in model.parameters():
        if parameter.dim() == 4 and not parameter.detach().any():
            torch.nn.init.normal_(parameter, std=0.05)
    save_checkpoint(model, config, path)
    return path


def _truth_key(detection_id: str) -> tuple[str, int, int]:
    """(video_id, frame_index, ordinal): how archive_truth names the person a detection id stands for."""
    video_id, frame, ordinal = detection_id.split(":")
    return video_id, int(frame), int(ordinal)


def _tracklets(rows: list[dict], embeddings: ReIDEmbeddings, model_id: str) -> pa.Table | None:
    """The tracklets of one video's detection rows, each with its aggregated embedding and its best detection (highest
    det_score x mean visibility, as a store without stored tracklets picks it) and thumbnail."""
    members: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row["track_id"]:
            members.setdefault(row["track_id"], []).append(i)
    if not members:
        return None
    scores = [(row["det_score"] or 0.0) * float(embeddings.visibility[i].mean()) for i, row in enumerate(rows)]
    tracklets, aggregated = [], []
    for track, picked in members.items():
        best = rows[max(picked, key=lambda i: scores[i])]
        times = [rows[i]["timestamp"] for i in picked]
        tracklets.append(tracklet_row(track, best["video_id"], best["camera_id"], min(times), max(times), len(picked),
                                      best["detection_id"], best["thumbnail"], model_id))
        aggregated.append(aggregate(embeddings.select(np.array(picked))))
    return tracklets_table(tracklets, ReIDEmbeddings.concat(aggregated))


def build_web_store(archive: Path, checkpoint: Path, db: Path, seed: int = 0, tracklets: bool = False) -> WebStore:
    """Store the archive's real detections (ids, cameras, times, tracks, keypoints, thumbnails) with identity-made embeddings
    (and with ``tracklets`` each track's stored tracklet, as ingestion writes it).

    A randomly initialised tiny model ranks identities at chance, so the embeddings come from the
    sidecar truth instead: one random unit vector per identity and part, plus noise, visible where the
    crop has the part's keypoints. The rows carry the checkpoint's model_id and shape, so the
    checkpoint can still embed uploaded queries.
    """
    encoder = open_encoder(checkpoint)
    dim, num_parts = encoder.dim, encoder.num_parts
    rng = np.random.default_rng(seed)
    tasks = discover_videos(list_video_files(archive))
    truth = archive_truth({t.uri: t.video_id for t in tasks})
    centres: dict[str, np.ndarray] = {}
    store = Store.open(str(db))
    part_joints = group_keypoint_indices("eight")
    out = WebStore(db, {}, {}, {}, set())
    for task in tasks:
        facts, crops = extract_video_crops(task, target_fps=5.0)
        rows, parts, visibility = [], [], []
        for record, crop in zip(crops.records, crops.crops):
            who = truth[_truth_key(record.detection_id)].identity
            centre = centres.setdefault(who, unit_rows(rng.normal(size=(num_parts, dim))))
            parts.append(unit_rows(centre + rng.normal(scale=0.3 / np.sqrt(dim), size=centre.shape)))
            visibility.append([float(crop.keypoints[list(j), 2].max() > 0) for j in part_joints[:num_parts]])
            rows.append(detection_row(record.detection_id, task.video_id, facts.camera_id, record.frame_index,
                                      record.timestamp, record.bbox, encoder.model_id, record.det_score,
                                      record.keypoints, record.track_id, record.thumbnail))
            out.identity[record.detection_id], out.camera[record.detection_id] = who, facts.camera_id
            out.track[record.detection_id] = record.track_id
            if min(visibility[-1]) > 0:
                out.whole.add(record.detection_id)
        part_array, vis_array = np.stack(parts).astype(np.float32), np.asarray(visibility, np.float32)
        global_emb = unit_rows((part_array * vis_array[..., None]).sum(axis=1) + 1e-3)
        video_row = {"video_id": task.video_id, "uri": task.uri, "camera_id": facts.camera_id,
                     "model_id": encoder.model_id, "start_time": facts.start_time, "duration": facts.duration,
                     "num_frames": facts.num_frames}
        embeddings = ReIDEmbeddings(global_emb, part_array, vis_array)
        stored = _tracklets(rows, embeddings, encoder.model_id) if tracklets else None
        store.write_video(video_row, detections_table(rows, embeddings), stored)
    return out


def cameras_of(store: WebStore, identity: str) -> set[str]:
    """The cameras that saw ``identity``."""
    return {store.camera[d] for d, who in store.identity.items() if who == identity}


def cross_camera_query(store: WebStore) -> str:
    """The first tracked detection showing every part whose identity another camera saw too."""
    for det_id in sorted(store.whole):
        if store.track[det_id] and len(cameras_of(store, store.identity[det_id])) > 1:
            return det_id
    raise AssertionError("the synthetic archive has no identity seen by two cameras")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return prompt_aware_checkpoint(tmp_path_factory.mktemp("web_model") / "tiny")


@pytest.fixture(scope="module")
def web_store(small_archive, model, tmp_path_factory) -> WebStore:
    return build_web_store(small_archive, model, tmp_path_factory.mktemp("web") / "db")


@pytest.fixture(scope="module")
def client(web_store, model) -> TestClient:
    return TestClient(create_app(str(web_store.db), str(model), max_upload_bytes=UPLOAD_LIMIT))


def _hits(answer: dict) -> list[dict]:
    """The detections an answer shows, best first: its detections, or each person's closest detection."""
    return answer["hits"] if answer["by"] == "detection" else [person["best"] for person in answer["people"]]


def test_info_describes_the_store(client, web_store):
    info = client.get("/api/info").json()
    assert info["cameras"] == sorted(set(web_store.camera.values()))
    assert info["detections"] == len(web_store.identity)
    assert info["parts"][0] == "head" and len(info["parts"]) == 8 and len(info["joints"]) == 17
    assert info["image_queries"] is True and info["time_range"][0] <= info["time_range"][1]
    assert info["max_candidates"] == 5000 and "max_candidates" in client.get("/api/openapi.json").text
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_a_search_that_maintenance_keeps_overtaking_asks_to_be_repeated(client, web_store, monkeypatch):
    def moved(*_):
        raise RowsMovedError("3 of 3 detections were deleted or moved by maintenance while they were being searched; "
                             "search again")

    monkeypatch.setattr(Store, "detections_at", moved)
    answer = client.post("/api/search", data={"detection_id": cross_camera_query(web_store), "k": "3"})
    assert answer.status_code == 503 and answer.json()["error"].endswith("search again")


def test_detection_query_finds_the_same_identity_in_other_cameras(client, web_store):
    query = cross_camera_query(web_store)
    answer = client.post("/api/search", data={"detection_id": query, "k": "8", "detections": "true"}).json()
    hits = _hits(answer)
    assert answer["query"] == {"kind": "detection", "detection_id": query} and answer["count"] == len(hits) == 8
    assert all(h["camera_id"] != web_store.camera[query] for h in hits)
    assert [web_store.identity[h["detection_id"]] for h in hits[:3]] == [web_store.identity[query]] * 3
    assert [h["rank"] for h in hits] == list(range(1, 9)) and hits[0]["distance"] <= hits[-1]["distance"]
    assert all(0 <= v <= 1 for h in hits for v in h["visibility"]) and len(hits[0]["part_distances"]) == 8
    thumb = client.get(hits[0]["thumbnail"])
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
    assert thumb.headers["x-content-type-options"] == "nosniff"


def test_filters_keep_to_camera_time_parts_and_visibility(client, web_store):
    query = cross_camera_query(web_store)
    camera = sorted(set(web_store.camera.values()) - {web_store.camera[query]})[0]
    info = client.get("/api/info").json()
    start, end = info["time_range"]
    middle = (start + end) / 2
    answer = client.post("/api/search", data={
        "detection_id": query, "cameras": [camera], "since": str(start), "until": str(middle),
        "parts": ["left_foot", "8"], "min_visibility": "1", "k": "50"}).json()
    hits = _hits(answer)
    assert hits and answer["parts"] == ["left_foot", "right_foot"]
    assert {h["camera_id"] for h in hits} == {camera}
    assert all(start <= h["timestamp"] <= middle for h in hits)
    assert all(h["visibility"][6] == h["visibility"][7] == 1 for h in hits)
    too_early = client.post("/api/search", data={"detection_id": query, "cameras": [camera], "k": "50",
                                                 "until": "2000-01-01T00:00:00"}).json()
    assert too_early["count"] == 0 and too_early["people"] == []


def test_tracklet_query_skips_its_own_detections(client, web_store):
    query = cross_camera_query(web_store)
    track = web_store.track[query]
    answer = client.post("/api/search", data={"track_id": track, "k": "5", "same_camera": "true"}).json()
    hits = _hits(answer)
    assert answer["query"]["kind"] == "tracklet" and len(hits) == 5
    assert all(web_store.track[h["detection_id"]] != track for h in hits)
    assert web_store.identity[hits[0]["detection_id"]] == web_store.identity[query]


def test_upload_and_prompted_detection_queries_are_embedded_with_their_keypoints(client, web_store):
    prompt = {"positive": [{"joint": "nose", "x": 24, "y": 12}, {"joint": 15, "x": 20, "y": 90}],
              "negative": [{"x": 5, "y": 40}]}
    answer = client.post("/api/search", files={"image": ("crop.png", png_bytes(96, 48), "image/png")},
                         data={"keypoints": json.dumps(prompt), "k": "4"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["query"] == {"kind": "image", "width": 48, "height": 96, "positive": 2, "negative": 1}
    assert body["count"] == 4
    unprompted = client.post("/api/search", files={"image": ("crop.png", png_bytes(96, 48), "image/png")}, data={"k": "4"}).json()
    assert unprompted["query"]["positive"] == 0
    assert [h["distance"] for h in _hits(unprompted)] != [h["distance"] for h in _hits(body)], "the prompt was ignored"
    query = cross_camera_query(web_store)
    prompted = client.post("/api/search", data={"detection_id": query, "k": "5",
                                                "keypoints": json.dumps({"positive": [{"joint": 0, "x": 5, "y": 5}]})})
    body = prompted.json()
    assert prompted.status_code == 200 and body["query"]["positive"] == 1 and body["query"]["height"] == 128
    assert query not in {h["detection_id"] for h in _hits(body)}
    assert web_store.camera[query] not in {h["camera_id"] for h in _hits(body)}


def test_the_picker_pages_tracklets_by_camera_and_time(client, web_store):
    tracks = {t for t in web_store.track.values() if t}
    first = client.get("/api/tracklets", params={"limit": 3}).json()
    second = client.get("/api/tracklets", params={"limit": 3, "offset": 3}).json()
    shown = first["tracklets"] + second["tracklets"]
    assert first["total"] == len(tracks) > 6 and first["more"] is True
    assert len({t["track_id"] for t in shown}) == 6 and {t["track_id"] for t in shown} <= tracks
    assert [(t["camera_id"], t["t_start"]) for t in shown] == sorted((t["camera_id"], t["t_start"]) for t in shown)
    for tracklet in shown:
        assert web_store.track[tracklet["best_detection_id"]] == tracklet["track_id"]
        assert tracklet["detections"] == sum(t == tracklet["track_id"] for t in web_store.track.values())
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\.\S+", tracklet["span_utc"])
    thumb = client.get(shown[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    camera = shown[-1]["camera_id"]
    of_camera = client.get("/api/tracklets", params={"camera": camera}).json()["tracklets"]
    assert {t["track_id"] for t in of_camera} == {t for d, t in web_store.track.items() if t and web_store.camera[d] == camera}
    jump = datetime.fromtimestamp(shown[0]["t_end"] + 1, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    later = client.get("/api/tracklets", params={"since": jump, "limit": 200}).json()
    assert 0 < later["total"] < len(tracks) and shown[0]["track_id"] not in {t["track_id"] for t in later["tracklets"]}
    assert all(t["t_end"] >= shown[0]["t_end"] for t in later["tracklets"])


def test_the_picker_refuses_bad_parameters(client):
    assert client.get("/api/tracklets", params={"camera": "cam99"}).json()["error"].startswith("unknown camera")
    assert client.get("/api/tracklets", params={"since": "soon"}).json()["error"].startswith("not a time: 'soon'")
    answer = client.get("/api/tracklets", params={"limit": "100000"})
    assert answer.status_code == 422 and answer.json()["error"].startswith("limit: ")
    assert client.get("/api/tracklets", params={"offset": "-1"}).status_code == 422
    assert client.get("/api/tracklets/no-such-track/thumbnail").status_code == 404


def _green(pixel: np.ndarray) -> bool:
    """Whether a BGR pixel is the drawn box's green (allowing for JPEG's blur)."""
    blue, green, red = (int(v) for v in pixel)
    return green > 180 and red < 100 and blue < 100


def test_a_hit_opens_where_and_when_its_provenance_its_frame_with_the_box_and_a_bounded_clip(client, web_store):
    query = cross_camera_query(web_store)
    path = "/api/hits/" + quote(query, safe="")
    about = client.get(path).json()
    assert about["camera_name"] == about["camera_id"] == web_store.camera[query] and about["timezone"] == "UTC"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", about["time_utc"])
    provenance = about["provenance"]
    assert provenance["detection_id"] == query and provenance["frame_index"] == int(query.split(":")[1])
    assert provenance["track_id"] == web_store.track[query] and Path(provenance["video_uri"]).is_file()
    assert provenance["model_id"] and provenance["store_schema_version"] == SCHEMA_VERSION
    frame = cv2.imdecode(np.frombuffer(client.get(path + "/frame").content, np.uint8), cv2.IMREAD_COLOR)
    x, y, w, h = (round(v) for v in provenance["bbox"])
    assert _green(frame[y, x + w // 2]) and _green(frame[y + h // 2, x]), "no box drawn around the detection"
    assert not _green(frame[y + h // 2, x + w // 2])
    clip = client.get(path + "/clip").json()
    frames = clip["frames"]
    assert 1 < len(frames) <= 2 * CLIP_SECONDS * CLIP_FPS + 1 and clip["hit_frame"] in [f["frame_index"] for f in frames]
    assert all(f["src"].startswith("data:image/jpeg;base64,") for f in frames)
    assert client.get("/api/hits/no-such-detection/frame").status_code == 404


@pytest.fixture()
def lone_hit(small_archive, tmp_path) -> tuple[Path, Path, str]:
    """A store of one detection on a copy of an archive video, a cameras file putting its camera in Tokyo, and the id."""
    video = tmp_path / "copy.mp4"
    shutil.copy(next(small_archive.rglob("*.mp4")), video)
    store = Store.open(str(tmp_path / "db"))
    row = detection_row("v:0000004:000", "v", "gate", 4, 1767254400.0, [10, 10, 20, 40], "m", 0.9, track_id="v-t1")
    vectors = ReIDEmbeddings(unit_rows(np.ones((1, 4))), unit_rows(np.ones((1, 2, 4))), np.ones((1, 2), np.float32))
    store.write_video({"video_id": "v", "uri": str(video), "camera_id": "gate", "model_id": "m",
                       "start_time": 1767254400.0, "duration": 4.0, "num_frames": 40}, detections_table([row], vectors))
    cameras = tmp_path / "cameras.yaml"
    cameras.write_text("cameras:\n  gate: {name: North gate, timezone: Asia/Tokyo}\n")
    return tmp_path / "db", cameras, "v:0000004:000"


def test_a_hit_shows_its_cameras_name_and_local_time_and_says_when_its_video_is_gone(lone_hit):
    db, cameras, hit = lone_hit
    client = TestClient(create_app(str(db), cameras=read_cameras(cameras)))
    about = client.get(f"/api/hits/{hit}").json()
    assert about["camera_name"] == "North gate" and about["timezone"] == "Asia/Tokyo"
    assert client.get("/api/info").json()["camera_names"] == {"gate": "North gate"}
    assert about["time_local"] == "2026-01-01 17:00:00 JST (UTC+09:00)"
    assert about["time_utc"] == "2026-01-01 08:00:00 UTC"
    clip = client.get(f"/api/hits/{hit}/clip").json()
    indices = [f["frame_index"] for f in clip["frames"]]
    assert 0 <= indices[0] < 4 and 4 in indices and len(indices) < 2 * CLIP_SECONDS * CLIP_FPS + 1  # cut at the start
    first = base64.b64decode(clip["frames"][0]["src"].split(",", 1)[1])
    assert cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR).shape[1] <= CLIP_MAX_WIDTH
    Path(about["provenance"]["video_uri"]).write_bytes(b"not a video any more")
    for path in (f"/api/hits/{hit}/frame", f"/api/hits/{hit.replace(':', '%3A')}/frame"):
        answer = client.get(path)
        error = answer.json()["error"]
        assert answer.status_code == 410 and "cannot be read any more" in error and "copy.mp4" in error
        assert "\n" not in error


TOKEN = "test-token-0123456789abc"


def test_with_a_token_every_api_request_must_carry_it(web_store):
    client = TestClient(create_app(str(web_store.db), token=TOKEN))
    refused = client.get("/api/info")
    assert refused.status_code == 401 and "token" in refused.json()["error"]
    assert client.get("/api/tracklets", headers={"x-kpr-token": TOKEN[:-1] + "x"}).status_code == 401
    assert client.get("/api/info", headers={"x-kpr-token": TOKEN}).status_code == 200
    assert client.get("/?token=wrong-token-0123456789").status_code == 401
    assert client.get("/").status_code == 200 and client.get("/api/info").status_code == 401
    welcome = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert welcome.status_code == 303 and welcome.headers["location"] == "/"
    assert "HttpOnly" in welcome.headers["set-cookie"] and "SameSite=Strict" in welcome.headers["set-cookie"]
    assert client.get("/api/info").status_code == 200, "the cookie the first visit set is not accepted"


def test_serving_beyond_loopback_needs_a_good_token(web_store, monkeypatch):
    monkeypatch.delenv("KPR_SERVE_TOKEN", raising=False)
    with pytest.raises(UserError, match="give --token TOKEN"):
        serve(str(web_store.db), host="0.0.0.0")
    monkeypatch.setenv("KPR_SERVE_TOKEN", "short")
    with pytest.raises(UserError, match="at least 16 characters"):
        serve(str(web_store.db), host="0.0.0.0")


def test_every_request_is_logged_with_its_status_time_and_case(client, caplog):
    with caplog.at_level(logging.INFO, logger="kpr.serve"):
        client.get("/api/info", params={"case": "harbour theft"})
        client.get("/api/tracklets", params={"limit": "0"})
        client.get("/api/info", headers={"x-kpr-case": "night\nshift"})
    lines = [record.getMessage() for record in caplog.records if record.name == "kpr.serve"]
    assert re.fullmatch(r"GET /api/info 200 \d+ ms case=harbour theft", lines[0]), lines
    assert re.fullmatch(r"GET /api/tracklets 422 \d+ ms", lines[1]), lines
    assert lines[2].endswith("case=night shift") and "token" not in "".join(lines)


QUERY, TRACK = "<a detection id>", "<its tracklet id>"
BAD_SEARCHES = [
    ({"files": {"image": ("notes.txt", b"just some text", "text/plain")}}, 400, "not an image"),
    ({"files": {"image": ("empty.png", b"", "image/png")}}, 400, "empty image"),
    ({"files": {"image": ("crop.png", png_bytes(96, 48))}, "data": {"keypoints": "{positive: ["}}, 400, "not valid JSON"),
    ({"files": {"image": ("crop.png", png_bytes(96, 48))}, "data": {"keypoints": '{"positive": [{"joint": "nose", "x": 60, "y": 5}]}'}},
     400, "outside the 48x96 image"),
    ({"files": {"image": ("crop.png", png_bytes(96, 48))}, "data": {"keypoints": '{"positive": [{"joint": "tail", "x": 1, "y": 1}]}'}},
     400, "joint must be a COCO keypoint"),
    ({"files": {"image": ("crop.png", png_bytes(96, 48))}, "data": {"keypoints": '[[1, 2]]'}}, 400, "17 COCO keypoints"),
    ({"files": {"image": ("crop.png", png_bytes(96, 48))}, "data": {"keypoints": "[" * 200_000}}, 400, "nested too deeply"),
    ({"data": {"detection_id": "no-such-detection"}}, 404, "unknown detection id"),
    ({"data": {"detection_id": "nul\x00id"}}, 404, "unknown detection id"),
    ({"data": {"track_id": "nul\x00id"}}, 404, "unknown tracklet id"),
    ({"data": {"track_id": "no-such-track"}}, 404, "unknown tracklet id"),
    ({"data": {"detection_id": QUERY, "parts": ["tail"]}}, 400, "unknown part 'tail'"),
    ({"data": {"detection_id": QUERY, "since": "yesterday"}}, 400, "not a time"),
    ({"data": {"detection_id": QUERY, "since": "2026-01-02", "until": "2026-01-01"}}, 400,
     "empty time window: start 2026-01-02T00:00:00+00:00 is after end 2026-01-01"),
    ({"data": {"detection_id": QUERY, "cameras": ["cam1", "cam99"]}}, 400, "unknown camera 'cam99'"),
    ({"data": {"detection_id": QUERY, "cameras": [""]}}, 400, "choose at least one camera"),
    ({"data": {"detection_id": QUERY, "k": "0"}}, 422, "k: "),
    ({"data": {"detection_id": QUERY, "k": "100000"}}, 422, "k: "),
    ({"data": {"detection_id": QUERY, "k": "ten"}}, 422, "k: "),
    ({"data": {"detection_id": QUERY, "min_visibility": "nan"}}, 422, "min_visibility: "),
    ({"data": {"detection_id": QUERY, "min_visibility": "2"}}, 422, "min_visibility: "),
    ({"data": {"detection_id": QUERY, "track_id": "t"}}, 400, "exactly one query"),
    ({"data": {"k": "3"}}, 400, "exactly one query"),
    ({"data": {"track_id": TRACK, "keypoints": '{"positive": []}'}}, 400, "not with a tracklet"),
    ({"data": {"track_id": TRACK, "same": ["nope:1"]}}, 404, "unknown detection id 'nope:1' among the marked hits"),
    ({"data": {"track_id": TRACK, "same": [QUERY], "not": [QUERY]}}, 400, "marked both as the same person"),
    ({"data": {"track_id": TRACK, "not": [f"d{i}" for i in range(201)]}}, 400, "at most 200 marked results"),
    ({"data": {"track_id": TRACK, "case": "x" * 201}}, 400, "a case name is 1 to 200 printable characters"),
]


@pytest.mark.parametrize(("request_args", "status", "message"), BAD_SEARCHES,
                         ids=[f"{status}-{message.strip(': ')}" for _, status, message in BAD_SEARCHES])
def test_bad_search_input_gets_a_4xx_and_one_line(client, web_store, request_args, status, message):
    query = cross_camera_query(web_store)
    stand_ins = {QUERY: query, TRACK: web_store.track[query]}
    data = {key: [stand_ins.get(v, v) for v in value] if isinstance(value, list) else stand_ins.get(value, value)
            for key, value in request_args.get("data", {}).items()}
    answer = client.post("/api/search", data=data, files=request_args.get("files"))
    error = answer.json()["error"]
    assert answer.status_code == status, error
    assert message in error and "\n" not in error and "Traceback" not in error


def test_every_user_error_type_is_answered_as_json(web_store):
    app = create_app(str(web_store.db))
    assert set(user_error_types()) <= set(app.exception_handlers)


def test_uploads_over_the_limit_get_413_before_being_read(client):
    big = png_bytes(96, 48) + b"\0" * UPLOAD_LIMIT
    answer = client.post("/api/search", files={"image": ("big.png", big, "image/png")})
    assert answer.status_code == 413 and "upload too large" in answer.json()["error"]

    def chunks():
        for _ in range(64):
            yield b"x" * 8192

    chunked = client.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413 and "upload too large" in chunked.json()["error"]
    assert client.post("/api/search", content=b"", headers={"content-length": "12abc"}).status_code == 400


def test_small_files_of_huge_images_are_refused(client):
    bomb = cv2.imencode(".png", np.zeros((4100, 4100), np.uint8))[1].tobytes()
    assert len(bomb) < UPLOAD_LIMIT
    answer = client.post("/api/search", files={"image": ("bomb.png", bomb, "image/png")})
    assert answer.status_code == 400 and "4100x4100 pixels is too large" in answer.json()["error"]


@pytest.mark.parametrize("path", [
    "/api/thumbnails/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/thumbnails/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/thumbnails/%252e%252e%252fetc%252fpasswd",
    "/api/thumbnails/%2Fetc%2Fpasswd",
    "/api/thumbnails/no-such-detection",
    "/api/thumbnails/x%00y",
    "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/app.py",
])
def test_thumbnails_and_static_files_never_read_arbitrary_files(client, path):
    answer = client.get(path)
    assert answer.status_code == 404
    assert b"root:" not in answer.content and b"import" not in answer.content


def test_unexpected_host_headers_are_refused_when_restricted(web_store):
    guarded = TestClient(create_app(str(web_store.db), allowed_hosts=["127.0.0.1", "localhost"]),
                         base_url="http://127.0.0.1:8765")
    assert guarded.get("/api/info").status_code == 200
    answer = guarded.get("/api/info", headers={"host": "attacker.example:8765"})
    assert answer.status_code == 400 and "Host" in answer.json()["error"]
    no_model = guarded.post("/api/search", files={"image": ("crop.png", png_bytes(96, 48), "image/png")})
    assert no_model.status_code == 400 and "no model loaded" in no_model.json()["error"]


def test_serve_refuses_a_busy_port_and_a_missing_store(web_store, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1:.*in use"):
            serve(str(web_store.db), port=busy.getsockname()[1])
    with pytest.raises(StoreError, match="no store at"):
        serve(str(tmp_path / "missing"))


def test_loopback_hosts_are_recognised():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.org"))


def _people(client: TestClient, track: str, **data) -> list[dict]:
    """The people a tracklet search shows (k = 6), with the given marks, case and options."""
    answer = client.post("/api/search", data={"track_id": track, "k": "6", **data})
    assert answer.status_code == 200, answer.text
    return answer.json()["people"]


def test_marked_hits_are_searched_with_and_not_shown_again(client, web_store):
    track = web_store.track[cross_camera_query(web_store)]
    first = _people(client, track)
    same, other = first[0]["best"]["detection_id"], first[1]["best"]["detection_id"]
    again = _people(client, track, same=[same], **{"not": [other]})
    shown = {p["track_id"] for p in again}
    assert len(again) == 6 and not shown & {first[0]["track_id"], first[1]["track_id"]}
    assert {p["track_id"] for p in first[2:]} <= shown


def test_a_case_records_searches_and_marks_and_reopens_with_them(client, web_store):
    query = cross_camera_query(web_store)
    track, camera = web_store.track[query], web_store.camera[query]
    others = sorted(set(web_store.camera.values()) - {camera})
    first = _people(client, track, case="harbour", cameras=others, since="2000-01-01T00:00:00")
    same, other, third = (p["best"]["detection_id"] for p in first[:3])
    assert client.post("/api/case/marks", data={"case": "harbour", "same": [same, third]}).status_code == 200
    marked = client.post("/api/case/marks", data={"case": "harbour", "not": [other], "cleared": [third]}).json()
    assert {(m["detection_id"], m["mark"]) for m in marked["marks"]} == {(same, "same"), (other, "not")}
    _people(client, track, case="harbour", cameras=others, since="2000-01-01T00:00:00", k="4", same=[same],
            **{"not": [other]})
    listed = client.get("/api/cases").json()["cases"]
    assert {"name": "harbour", "searches": 2, "marks": 3} == {key: listed[0][key] for key in ("name", "searches", "marks")}
    reopened = client.get("/api/case", params={"case": " harbour "}).json()
    assert reopened["query"]["track_id"] == track and reopened["query"]["k"] == 4
    assert reopened["query"]["cameras"] == others and reopened["query"]["since"] == "2000-01-01T00:00:00"
    assert [(m["detection_id"], m["mark"], m["camera_id"]) for m in reopened["marks"]] == [
        (same, "same", web_store.camera[same]), (other, "not", web_store.camera[other])]


def test_bad_marks_and_unknown_cases_get_a_4xx_and_one_line(client, web_store):
    _people(client, web_store.track[cross_camera_query(web_store)], case="marks-checked")
    for data, status, message in [({"case": "marks-checked", "same": ["nope:1"]}, 400, "unknown detection id 'nope:1'"),
                                  ({"case": "marks-checked"}, 400, "give the marked results"),
                                  ({"same": ["nope:1"]}, 422, "case: ")]:
        answer = client.post("/api/case/marks", data=data)
        assert answer.status_code == status and message in answer.json()["error"], answer.text
    for path in ("/api/case", "/api/case/export"):
        answer = client.get(path, params={"case": "no such case"})
        assert answer.status_code == 404 and "no case named 'no such case'" in answer.json()["error"]


def test_the_journey_of_the_query_and_its_confirmed_hits_as_timeline_and_map(web_store, model, tmp_path):
    query = cross_camera_query(web_store)
    cameras = sorted(set(web_store.camera.values()))
    (tmp_path / "cameras.yaml").write_text("cameras:\n" + "".join(
        f"  {camera}: {{name: Gate {i}, position: [{10 * i}, {5 * i}]}}\n" for i, camera in enumerate(cameras)))
    app = TestClient(create_app(str(web_store.db), cameras=read_cameras(tmp_path / "cameras.yaml")))
    people = _people(app, web_store.track[query])
    confirmed = [p["best"]["detection_id"] for p in people[:2]]
    journey = app.get("/api/journey", params={"query": web_store.track[query], "same": confirmed}).json()
    assert journey["chosen"] == "the query and 2 confirmed sighting(s)" and len(journey["sightings"]) == 3
    assert [s["query"] for s in journey["sightings"]].count(True) == 1
    starts = [s["t_start"] for s in journey["sightings"]]
    assert starts == sorted(starts) and len(journey["transits"]) == 2
    assert journey["timeline_svg"].startswith("<svg") and journey["timeline_svg"].count("class='sighting") == 3
    assert "Gate" in journey["map_svg"] and "class='leg'" in journey["map_svg"]
    plain = TestClient(create_app(str(web_store.db))).get("/api/journey", params={"query": web_store.track[query]})
    assert plain.json()["map_svg"] == "" and len(plain.json()["sightings"]) == 1
    unknown = app.get("/api/journey", params={"query": "nope-t1"})
    assert unknown.status_code == 404 and "unknown tracklet or detection id 'nope-t1'" in unknown.json()["error"]


def test_a_case_exports_as_a_zip_of_its_evidence_bundle(client, web_store):
    people = _people(client, web_store.track[cross_camera_query(web_store)], case="export me/now")
    client.post("/api/case/marks", data={"case": "export me/now", "same": [people[0]["best"]["detection_id"]]})
    answer = client.get("/api/case/export", params={"case": "export me/now"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"] == 'attachment; filename="case-export-me-now.zip"'
    bundle = zipfile.ZipFile(io.BytesIO(answer.content))
    manifest = json.loads(bundle.read("case-export-me-now/manifest.json"))["files"]
    assert {"index.html", "case.json"} <= set(manifest) and any(name.startswith("frames/") for name in manifest)
    for name, digest in manifest.items():
        assert hashlib.sha256(bundle.read(f"case-export-me-now/{name}")).hexdigest() == digest
    case = json.loads(bundle.read("case-export-me-now/case.json"))
    assert [e["kind"] for e in case["events"]] == ["query", "results", "marks"]
