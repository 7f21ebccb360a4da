"""Store (idempotent per-video writes, schema checks) and PersonSearch (ANN + KPR re-rank) on real LanceDB."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from kpr_model.embeddings import ReIDEmbeddings
from storage import (
    NotFoundError,
    PersonSearch,
    SearchFilters,
    Store,
    StoreError,
    detection_row,
    detections_table,
    embeddings_of,
)
from storage.schema import VIDEOS, VERSION_KEY, videos_schema
from support import MODEL_ID as MODEL, detections_of, random_embeddings, random_unit, sorted_rows, video_row

DIM, PARTS = 32, 6


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A fresh store in a temporary folder."""
    return Store.open(str(tmp_path / "store"))


def test_writing_a_video_twice_leaves_the_same_rows(store: Store) -> None:
    video = video_row("v1", "cam-1")
    table = detections_of(video, random_embeddings(np.random.default_rng(0), 12, PARTS, DIM))
    assert store.done_video_ids(MODEL) == set()
    assert store.write_video(video, table) == 12
    first = sorted_rows(store)
    assert store.write_video(video, table) == 0
    assert sorted_rows(store) == first
    assert store.count_detections() == 12 and store.count_videos() == 1
    assert store.done_video_ids(MODEL) == {"v1"} and store.done_video_ids("other-model") == set()
    assert store.video_rows()[0]["n_detections"] == 12


# A writer process that SIGKILLs itself the moment its detections are appended: after it claimed the video
# and committed its rows, before it marks the video done. The hook is on LanceDB's own API, not the store's code.
_DIE_AFTER_DETECTIONS = """
import json, os, signal, sys
import pyarrow as pa
from lancedb.table import LanceTable
from storage import Store

add = LanceTable.add

def die_after_the_detections(table, *args, **kwargs):
    result = add(table, *args, **kwargs)
    if table.name == "detections":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

LanceTable.add = die_after_the_detections
db, video, batch = sys.argv[1:]
Store.open(db).write_video(json.loads(video), pa.ipc.open_file(batch).read_all())
"""


def test_a_writer_killed_before_marking_its_video_done_leaves_a_store_that_a_rewrite_completes(tmp_path: Path) -> None:
    db, batch = tmp_path / "store", tmp_path / "batch.arrow"
    video = video_row("v1", "cam-1")
    table = detections_of(video, random_embeddings(np.random.default_rng(1), 9, PARTS, DIM))
    with pa.ipc.new_file(batch, table.schema) as writer:
        writer.write_table(table)
    killed = subprocess.run([sys.executable, "-c", _DIE_AFTER_DETECTIONS, str(db), json.dumps(video), str(batch)],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = Store.open(str(db))
    assert store.done_video_ids(MODEL) == set() and store.count_detections() == 9
    assert store.write_video(video, table) == 0
    assert store.count_detections() == 9 and store.done_video_ids(MODEL) == {"v1"}
    assert len({r["detection_id"] for r in sorted_rows(store)}) == 9


def test_rewrite_replaces_only_that_videos_rows(store: Store) -> None:
    rng = np.random.default_rng(2)
    v1, v2 = video_row("v1", "cam-1"), video_row("v2", "cam-2")
    store.write_video(v1, detections_of(v1, random_embeddings(rng, 5, PARTS, DIM)))
    store.write_video(v2, detections_of(v2, random_embeddings(rng, 4, PARTS, DIM)))
    shorter = detections_of(v1, random_embeddings(rng, 3, PARTS, DIM))
    assert store.write_video(v1, shorter) == 0
    assert store.count_detections("v1") == 3 and store.count_detections("v2") == 4
    assert store.write_video(v1, []) == 0
    assert store.count_detections("v1") == 0 and store.count_detections("v2") == 4


def test_dict_rows_and_lookups_by_escaped_ids(store: Store) -> None:
    video = video_row("cam:7/2024-01-01'x", "cam-7")
    embeddings = random_embeddings(np.random.default_rng(3), 4, PARTS, DIM)
    rows = detections_of(video, embeddings).to_pylist()
    assert store.write_video(video, rows) == 4
    wanted = [rows[2]["detection_id"], "missing", rows[0]["detection_id"], rows[2]["detection_id"]]
    assert store.detections_by_ids(wanted)["detection_id"].to_pylist() == [wanted[0], wanted[2]]
    row = store.get_detection(rows[1]["detection_id"])
    assert row is not None and row["thumbnail"] == rows[1]["thumbnail"] and row["frame_index"] == 1
    back = embeddings_of([row])
    # int8 parts: each value within half a quantisation step (max|x| / 127) of the original
    np.testing.assert_allclose(back.parts[0], embeddings.parts[1], rtol=0, atol=np.abs(embeddings.parts[1]).max() / 254 + 1e-7)
    assert store.get_detection(rows[1]["detection_id"], ["frame_index"]) == {"frame_index": 1}
    for unknown in ("x' OR '1'='1", "nul\x00id"):
        with pytest.raises(NotFoundError, match="unknown detection id"):
            store.get_detection(unknown)


def test_record_failure_then_success(store: Store) -> None:
    video = video_row("v9", "cam-1")
    store.record_failure(video, "decode error: moov atom not found")
    assert store.done_video_ids(MODEL) == set() and store.count_videos("failed") == 1
    assert store.video_rows("failed")[0]["error"] == "decode error: moov atom not found"
    store.write_video(video, detections_of(video, random_embeddings(np.random.default_rng(4), 2, PARTS, DIM)))
    assert store.done_video_ids(MODEL) == {"v9"} and store.count_videos("failed") == 0 and store.count_videos("done") == 1


def test_bad_batches_are_refused(store: Store) -> None:
    rng = np.random.default_rng(5)
    video = video_row("v1", "cam-1")
    store.write_video(video, detections_of(video, random_embeddings(rng, 2, PARTS, DIM)))
    other_shape = ReIDEmbeddings(random_unit(rng, 2, 16), random_unit(rng, 2, PARTS, 16), np.ones((2, PARTS), np.float32))
    with pytest.raises(StoreError, match="D=32, K=6; refusing a batch with D=16"):
        store.write_video(video, detections_of(video, other_shape))
    with pytest.raises(StoreError, match="another video_id"):
        store.write_video(video_row("v2", "cam-1"), detections_of(video, random_embeddings(rng, 2, PARTS, DIM)))
    table = detections_of(video, random_embeddings(rng, 2, PARTS, DIM))
    with pytest.raises(StoreError, match="duplicate detection_id"):
        store.write_video(video, pa.concat_tables([table, table]))
    assert store.count_detections() == 2


def test_reopen_sees_data_and_missing_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        Store.open(str(tmp_path / "absent"), create=False)
    store = Store.open(str(tmp_path / "s"))
    video = video_row("v1", "cam-1")
    store.write_video(video, detections_of(video, random_embeddings(np.random.default_rng(6), 3, PARTS, DIM)))
    again = Store.open(str(tmp_path / "s"), create=False)
    assert again.count_detections() == 3 and again.embedding_shape == (DIM, PARTS)


def test_unwritable_path_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create store at .*a_file/store"):
        Store.open(str(blocker / "store"))


def test_schema_version_mismatch_is_refused(tmp_path: Path) -> None:
    db = lancedb.connect(str(tmp_path / "old"))
    db.create_table(VIDEOS, schema=videos_schema().with_metadata({VERSION_KEY: b"999"}))
    with pytest.raises(StoreError, match="schema version 999, this code reads version 1, 2 or 3"):
        Store.open(str(tmp_path / "old"))


@pytest.fixture
def planted(store: Store) -> dict:
    """A gallery over three cameras with a query, its true match (same visible parts) and a global-only decoy."""
    rng = np.random.default_rng(7)
    query = random_embeddings(rng, 1, PARTS, DIM)
    query.visibility[0, 4:] = 0.0
    target_parts = query.parts.copy()
    target_parts[0, 4:] = random_unit(rng, 2, DIM)
    near_global = random_unit(rng, 1, DIM)
    target_global = query.global_emb + 0.6 * near_global
    decoy_global = query.global_emb + 0.05 * random_unit(rng, 1, DIM)
    target = ReIDEmbeddings(target_global / np.linalg.norm(target_global), target_parts, np.ones((1, PARTS), np.float32))
    decoy = ReIDEmbeddings(decoy_global / np.linalg.norm(decoy_global), random_unit(rng, 1, PARTS, DIM), np.ones((1, PARTS), np.float32))
    videos = {"va": video_row("va", "cam-a", 1_000.0), "vb": video_row("vb", "cam-b", 2_000.0), "vc": video_row("vc", "cam-c", 3_000.0)}
    store.write_video(videos["va"], detections_of(videos["va"], ReIDEmbeddings.concat([query, random_embeddings(rng, 99, PARTS, DIM)])))
    store.write_video(videos["vb"], detections_of(videos["vb"], ReIDEmbeddings.concat([random_embeddings(rng, 50, PARTS, DIM), target, random_embeddings(rng, 49, PARTS, DIM)])))
    store.write_video(videos["vc"], detections_of(videos["vc"], ReIDEmbeddings.concat([random_embeddings(rng, 20, PARTS, DIM), decoy, random_embeddings(rng, 79, PARTS, DIM)])))
    return {
        "store": store, "query": query, "query_id": "va:f0-p0'",
        "target_id": "vb:f50-p0'", "decoy_id": "vc:f20-p0'",
    }


def test_search_by_detection_finds_the_planted_match_thanks_to_rerank(planted: dict) -> None:
    hits = PersonSearch(planted["store"]).by_detection(planted["query_id"], k=5)
    assert [h.detection_id for h in hits][:2] == [planted["target_id"], planted["decoy_id"]]
    target, decoy = hits[0], hits[1]
    assert decoy.ann_distance < target.ann_distance
    assert target.distance < 0.2 < 1.0 < decoy.distance
    assert target.camera_id == "cam-b" and target.frame_index == 50 and target.timestamp == 2_050.0
    assert target.track_id == "vb:t2" and target.bbox == (10.0, 20.0, 50.0, 120.0)
    assert target.thumbnail == b"\xff\xd8jpeg" + bytes([50]) and target.visibility.shape == (PARTS,)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert all(h.camera_id != "cam-a" for h in hits)


def test_search_filters_exclude_what_they_must(planted: dict) -> None:
    search = PersonSearch(planted["store"])
    same_camera = search.by_detection(planted["query_id"], k=200, other_cameras_only=False)
    assert planted["query_id"] not in {h.detection_id for h in same_camera}
    assert {h.camera_id for h in same_camera} == {"cam-a", "cam-b", "cam-c"}
    only_c = search.search(planted["query"], k=50, filters=SearchFilters(cameras=["cam-c"]))
    assert {h.camera_id for h in only_c} == {"cam-c"} and only_c[0].detection_id == planted["decoy_id"]
    no_b = search.search(planted["query"], k=300, filters=SearchFilters(exclude_cameras=["cam-b"]))
    assert len(no_b) == 200 and "cam-b" not in {h.camera_id for h in no_b}
    no_vb = search.search(planted["query"], k=300, filters=SearchFilters(exclude_video_ids=["vb", "va"]))
    assert {h.video_id for h in no_vb} == {"vc"}
    window = search.search(planted["query"], k=300, filters=SearchFilters(t_min=2_010.0, t_max=2_050.0))
    assert {h.timestamp for h in window} == {2_000.0 + i for i in range(10, 51)}
    assert window[0].detection_id == planted["target_id"]
    before = search.search(planted["query"], k=300, filters=SearchFilters(t_max=2_049.5))
    assert planted["target_id"] not in {h.detection_id for h in before}
    assert search.search(planted["query"], filters=SearchFilters(cameras=[])) == []


def test_unknown_detection_and_wrong_query_shape(planted: dict) -> None:
    search = PersonSearch(planted["store"])
    with pytest.raises(NotFoundError, match="unknown detection id 'nope:1'"):
        search.by_detection("nope:1")
    wrong = ReIDEmbeddings(np.ones((1, 8), np.float32), np.ones((1, PARTS, 8), np.float32), np.ones((1, PARTS), np.float32))
    with pytest.raises(StoreError, match="query has D=8"):
        search.search(wrong)


def test_search_on_an_empty_store(store: Store) -> None:
    assert PersonSearch(store).search(random_embeddings(np.random.default_rng(8), 1, PARTS, DIM)) == []


def test_indexed_and_compacted_store_gives_the_same_answer(planted: dict) -> None:
    store, search = planted["store"], PersonSearch(planted["store"])
    before = [h.detection_id for h in search.by_detection(planted["query_id"], k=3)]
    assert "detections.vector" in store.create_indexes(vector_index_min_rows=0)
    store.optimize()
    after = search.by_detection(planted["query_id"], k=3)
    assert [h.detection_id for h in after] == before and after[0].detection_id == planted["target_id"]
    assert store.get_detection(planted["target_id"])["frame_index"] == 50 and store.count_detections() == 300


def test_missing_keypoints_are_stored_as_zero_confidence(store: Store) -> None:
    video = video_row("v1", "cam-1")
    row = detection_row("v1:0", "v1", "cam-1", 0, 1_000.0, (0, 0, 5, 9), MODEL)
    store.write_video(video, detections_table([row], random_embeddings(np.random.default_rng(9), 1, PARTS, DIM)))
    stored = store.get_detection("v1:0")
    assert stored["keypoints"] == [0.0] * 51 and stored["thumbnail"] is None and stored["track_id"] is None
