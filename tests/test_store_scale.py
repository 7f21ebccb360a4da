"""Store at scale: maintenance (compaction, version cleanup, indexes), ANN settings, schema-version refusal, listings."""
from __future__ import annotations

from datetime import timedelta
import json
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from storage import PersonSearch, SearchFilters, Store, StoreError, global_vectors
from storage.schema import DETECTIONS, VERSION_KEY
from storage.indexes import vector_index_plan
from storage.store import AnnSettings
from support import detections_of, random_embeddings, sorted_rows, video_row

pytestmark = pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\)")

DIM, PARTS = 32, 6


def _fill(store: Store, videos: int, per_video: int, first: int = 0) -> None:
    """Videos ``first``.. (one commit each, so one fragment each) over three cameras, 100 s apart."""
    rng = np.random.default_rng(first)
    for i in range(first, first + videos):
        video = video_row(f"v{i:03d}", f"cam-{i % 3}", 1_000.0 + 100.0 * i)
        store.write_video(video, detections_of(video, random_embeddings(rng, per_video, PARTS, DIM)))


def _ranking(store: Store, queries) -> list[list[tuple[str, float]]]:
    """(id, distance) of the top 20 for each query, unfiltered and with a camera + time filter."""
    search = PersonSearch(store)
    window = SearchFilters(cameras=["cam-1", "cam-2"], t_min=1_500.0, t_max=3_000.0)
    return [[(h.detection_id, h.distance) for h in search.search(queries.select([i]), k=20, filters=f)]
            for i in range(len(queries)) for f in (SearchFilters(), window)]


def test_store_written_by_another_schema_version_is_refused_in_one_line(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    _fill(store, videos=2, per_video=3)
    db = lancedb.connect(str(tmp_path / "db"))
    rows = db.open_table(DETECTIONS).to_arrow()
    db.drop_table(DETECTIONS)
    db.create_table(DETECTIONS, rows.replace_schema_metadata({**rows.schema.metadata, VERSION_KEY: b"999"}))
    with pytest.raises(StoreError) as refused:
        Store.open(tmp_path / "db", create=False)
    message = str(refused.value)
    assert "\n" not in message
    assert "table 'detections' has schema version 999, this code reads version 1, 2 or 3" in message
    assert "new store location" in message
    db.drop_table(DETECTIONS)
    db.create_table(DETECTIONS, rows.replace_schema_metadata({}))
    with pytest.raises(StoreError, match="has no schema version, this code reads version 1, 2 or 3"):
        Store.open(tmp_path / "db", create=False)


def test_maintain_compacts_cleans_up_and_keeps_rows_and_search_results(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    _fill(store, videos=24, per_video=15)
    rewritten = video_row("v005", "cam-2", 1_500.0)
    store.write_video(rewritten, detections_of(rewritten, random_embeddings(np.random.default_rng(1), 10, PARTS, DIM)))
    queries = random_embeddings(np.random.default_rng(2), 3, PARTS, DIM)
    rows, ranking = sorted_rows(store), _ranking(store, queries)
    versions_before = len(store._open_detections().list_versions())

    first = store.maintain(cleanup_older_than=None)
    assert (first["fragments_before"], first["fragments_after"], first["versions_removed"]) == (24, 1, 0)
    assert store.maintain()["versions_removed"] == 0  # the default keeps a week of versions
    report = store.maintain(cleanup_older_than=timedelta(0))

    assert report["detections"] == len(rows) == 23 * 15 + 10 and report["videos"] == 24
    assert report["fragments_after"] == 1
    assert report["versions_removed"] >= versions_before
    assert len(lancedb.connect(str(tmp_path / "db")).open_table(DETECTIONS).list_versions()) == 1
    assert {"detections.detection_id", "detections.camera_id", "detections.timestamp", "detections.track_id",
            "videos.video_id"} <= set(report["indexes"]) and "detections.vector" not in report["indexes"]
    assert report["indexes"]["detections.camera_id"]["type"] == "BITMAP"
    assert report["indexes"]["detections.timestamp"]["indexed_rows"] == len(rows)
    reopened = Store.open(tmp_path / "db", create=False)
    assert sorted_rows(reopened) == rows
    assert _ranking(reopened, queries) == ranking


def test_vector_index_is_built_when_large_kept_then_retrained_as_the_table_grows(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    _fill(store, videos=4, per_video=100)
    assert "detections.vector" not in store.maintain(vector_index_min_rows=500)["indexes"]
    _fill(store, videos=2, per_video=100, first=4)
    created = store.maintain(vector_index_min_rows=500)["indexes"]["detections.vector"]
    assert created["action"] == "created" and created["type"] == "IVF_PQ"
    assert created["num_partitions"] == 600 // 256 and DIM % created["num_sub_vectors"] == 0
    _fill(store, videos=1, per_video=100, first=6)
    kept = store.maintain(vector_index_min_rows=500)["indexes"]["detections.vector"]
    assert kept["action"] == "kept" and kept["trained_rows"] == 600
    assert (kept["indexed_rows"], kept["unindexed_rows"]) == (700, 0)
    _fill(store, videos=5, per_video=100, first=7)
    rebuilt = store.maintain(vector_index_min_rows=500)["indexes"]["detections.vector"]
    assert rebuilt["action"] == "rebuilt" and rebuilt["trained_rows"] == 1200 and rebuilt["num_partitions"] == 4


def test_ann_probes_refinement_and_flat_filtering_trade_speed_for_exactness(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db", ann=AnnSettings(nprobes=1, refine_factor=None, flat_max_rows=0))
    _fill(store, videos=6, per_video=100)
    plan = store.build_vector_index()
    table = store.query_detections(None, columns=["camera_id", "vector"])
    query = random_embeddings(np.random.default_rng(3), 1, PARTS, DIM).global_emb[0]
    squared = ((global_vectors(table) - query) ** 2).sum(axis=1)

    def distances(found: pa.Table) -> np.ndarray:
        return found["_distance"].to_numpy()

    exact = np.sort(squared)[:10]
    everything = store.nearest(query, None, 10, ["camera_id"], nprobes=plan["num_partitions"], refine_factor=10)
    np.testing.assert_allclose(distances(everything), exact, rtol=1e-4, atol=1e-5)
    assert not np.allclose(distances(store.nearest(query, None, 10, ["camera_id"])), exact, rtol=1e-4, atol=1e-5)

    one_camera = "camera_id = 'cam-0'"  # 200 of the 600 rows, spread over both IVF partitions
    assert plan["num_partitions"] == 2
    assert store.nearest(query, one_camera, 200, ["camera_id"], max_nprobes=1).num_rows < 200
    assert store.nearest(query, one_camera, 200, ["camera_id"], max_nprobes=2).num_rows == 200
    exact_cam0 = np.sort(squared[np.array(table["camera_id"].to_pylist()) == "cam-0"])[:10]
    assert not np.allclose(distances(store.nearest(query, one_camera, 10, ["camera_id"])), exact_cam0, rtol=1e-4, atol=1e-5)
    flat = Store.open(tmp_path / "db", ann=AnnSettings(nprobes=1, refine_factor=None))  # 200 rows <= flat_max_rows
    np.testing.assert_allclose(distances(flat.nearest(query, one_camera, 10, ["camera_id"])), exact_cam0, rtol=1e-4, atol=1e-5)


def test_a_filter_bounded_by_the_videos_table_is_scanned_exactly_and_a_wrong_bound_costs_no_row(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db", ann=AnnSettings(flat_max_rows=150))
    _fill(store, videos=6, per_video=50)  # cam-0: v000 (1000-1060 s), v003 (1300-1360 s); cam-1: v001, v004; ...
    store.record_failure(video_row("broken", "cam-1", 1_000.0), "decode error")
    assert store.detections_at_most(["cam-1"], None, None) == 100
    assert store.detections_at_most(["cam-0", "cam-1"], 1_200.0, 1_420.0) == 100  # v003, v004
    assert store.detections_at_most(None, 2_000.0, None) == 0
    table = store.query_detections(None, columns=["camera_id", "timestamp", "vector"])
    query = random_embeddings(np.random.default_rng(3), 1, PARTS, DIM).global_emb[0]
    squared = ((global_vectors(table) - query) ** 2).sum(axis=1)
    cameras = np.array(table["camera_id"].to_pylist())

    def nearest(where: str, bound: int) -> list[float]:
        return store.nearest(query, where, 10, ["camera_id"], kept_at_most=bound)["_distance"].to_pylist()

    for where, kept in (("camera_id = 'cam-1'", cameras == "cam-1"), ("camera_id != 'cam-9'", cameras != "cam-9")):
        exact = np.sort(squared[kept])[:10]
        for bound in (0, 100, 10_000):  # a bound below the truth (videos written since it was read) changes nothing
            np.testing.assert_allclose(nearest(where, bound), exact, rtol=1e-4, atol=1e-5)
    spanless = video_row("spanless", "cam-1", 1_000.0)
    rows = detections_of(spanless, random_embeddings(np.random.default_rng(4), 5, PARTS, DIM))
    store.write_video({**spanless, "start_time": None}, rows)
    assert store.detections_at_most(["cam-1"], None, None) is None
    assert store.detections_at_most(["cam-2"], None, None) == 100


def test_a_filter_scanned_in_many_batches_gives_its_exact_nearest_rows_in_order(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(tmp_path / "db", ann=AnnSettings(flat_max_rows=150))
    _fill(store, videos=6, per_video=50)
    table = store.query_detections("camera_id = 'cam-1'", columns=["detection_id", "vector"])
    query = random_embeddings(np.random.default_rng(5), 1, PARTS, DIM).global_emb[0]
    squared = ((global_vectors(table) - query) ** 2).sum(axis=1)
    exact = [table["detection_id"][int(i)].as_py() for i in np.argsort(squared)[:40]]
    monkeypatch.setattr("storage.store._SCAN_BATCH_ROWS", 16)  # 100 kept rows in 7 batches
    found = store.nearest(query, "camera_id = 'cam-1'", 40, ["detection_id", "vector"], kept_at_most=100)
    assert found["detection_id"].to_pylist() == exact
    np.testing.assert_allclose(found["_distance"].to_numpy(), np.sort(squared)[:40], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(global_vectors(found), global_vectors(table.take(np.argsort(squared)[:40])))


def test_vector_index_plan_follows_table_size_and_dimension() -> None:
    plan = vector_index_plan(1_000_000, 128)
    assert (plan["type"], plan["num_partitions"], plan["num_sub_vectors"]) == ("IVF_PQ", 1000, 32)
    assert vector_index_plan(10_000, 100)["num_sub_vectors"] == 25
    assert vector_index_plan(10_000, 100)["num_partitions"] == 10_000 // 256
    assert "num_sub_vectors" not in vector_index_plan(40_000, 128, "IVF_HNSW_SQ")
    with pytest.raises(StoreError, match="unknown vector index type 'HNSW'; known: IVF_PQ, IVF_HNSW_SQ"):
        vector_index_plan(100, 128, "HNSW")
    with pytest.raises(StoreError, match="must divide the embedding dim 128"):
        vector_index_plan(100, 128, num_sub_vectors=24)


def test_cameras_time_range_pages_and_tracklets(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    assert store.cameras() == [] and store.time_range() is None and store.list_detections(None, 10).num_rows == 0
    _fill(store, videos=4, per_video=5)
    store.record_failure(video_row("broken", "cam-9"), "decode error")
    store.write_video(video_row("empty", "cam-8", 2_000.0), [])
    assert store.cameras() == ["cam-0", "cam-1", "cam-2"]  # neither a failed video's camera nor one without people
    later = video_row("later", "cam-7", 3_000.0)
    other_process = Store.open(tmp_path / "db")
    other_process.write_video(later, detections_of(later, random_embeddings(np.random.default_rng(1), 2, PARTS, DIM)))
    assert store.cameras() == ["cam-0", "cam-1", "cam-2", "cam-7"]
    store.write_video(later, [])  # the same video again, now without people: its camera has none left
    assert store.cameras() == ["cam-0", "cam-1", "cam-2"]
    assert store.time_range() == (1_000.0, 1_304.0)
    pages = [store.list_detections(None, limit=6, offset=o) for o in range(0, 30, 6)]
    ids = [i for page in pages for i in page["detection_id"].to_pylist()]
    assert len(ids) == len(set(ids)) == 20 and pages[-1].num_rows == 0
    assert "parts" not in pages[0].column_names and "thumbnail" in pages[0].column_names
    cam1 = store.list_detections("camera_id = 'cam-1'", limit=100)
    assert set(cam1["camera_id"].to_pylist()) == {"cam-1"} and cam1.num_rows == 5
    track = store.tracklet_detections("v002:t1")
    assert track["frame_index"].to_pylist() == [1, 4] and set(track["track_id"].to_pylist()) == {"v002:t1"}
    assert {"vector", "parts", "visibility"} <= set(track.column_names)
    assert store.tracklet_detections("v002:t9").num_rows == 0
    with pytest.raises(StoreError, match="limit and offset must be >= 0"):
        store.list_detections(None, limit=-1)


def test_iter_detections_streams_every_row_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    _fill(store, videos=5, per_video=7)
    batches = list(store.iter_detections(["detection_id"], batch_rows=8))
    assert all(isinstance(b, pa.Table) and b.num_rows <= 8 for b in batches)
    ids = [i for b in batches for i in b["detection_id"].to_pylist()]
    assert sorted(ids) == sorted(r["detection_id"] for r in sorted_rows(store))


def test_the_store_scale_benchmark_writes_every_row_once_beside_a_plain_append(tmp_path: Path) -> None:
    from bench import store_scale

    out = tmp_path / "store_scale.json"
    argv = ["--rows", "4000", "--workdir", str(tmp_path / "work"), "--maintain-fragments", "2", "--probe-videos", "2",
            "--rewrites", "2", "--skip-s3", "--output", str(out)]
    assert store_scale.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["exactly_once"] | {"videos_done": None} == {
        "expected_rows": 4500, "rows": 4500, "distinct_ids": 4500, "lost_rows": 0, "duplicate_rows": 0,
        "videos_done": None}
    assert result["exactly_once"]["videos_done"] == 18
    assert result["write_rows_per_s"] > 0 and result["append_rows_per_s"] > 0 and result["commit_p50_ms_by_rows"]
