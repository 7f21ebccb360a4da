"""The tracklets table: written with its video idempotently, stale tracklets removed, absent in older stores."""
from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from kpr_model.embeddings import ReIDEmbeddings, aggregate
from storage import TRACKLETS, Store, StoreError, detection_row, detections_table, tracklet_row, tracklets_table
from support import MODEL_ID as MODEL, random_embeddings, video_row
from workers.records import detection_id

DIM, PARTS = 32, 6


def _batch(video: dict, tracks: int, per_track: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """A video's detections (``per_track`` per tracklet) and its tracklets with their aggregated embeddings."""
    rng = np.random.default_rng(seed)
    vid = video["video_id"]
    detections, tracklets, aggregated = [], [], []
    for t in range(tracks):
        embeddings = random_embeddings(rng, per_track, PARTS, DIM, random_visibility=True)
        ids = [detection_id(vid, f, t) for f in range(per_track)]
        detections.append(detections_table([
            detection_row(ids[f], vid, "cam-1", f, 1_000.0 + f / 5, (10.0 * t, 0.0, 40.0, 90.0), MODEL, 0.9,
                          track_id=f"{vid[:12]}-t{t + 1}", thumbnail=b"jpeg", run_id="run-1")
            for f in range(per_track)], embeddings))
        tracklets.append(tracklet_row(f"{vid[:12]}-t{t + 1}", vid, "cam-1", 1_000.0, 1_000.0 + (per_track - 1) / 5,
                                      per_track, ids[0], f"thumb-{t}".encode(), MODEL, "run-1"))
        aggregated.append(aggregate(embeddings))
    return pa.concat_tables(detections), tracklets_table(tracklets, ReIDEmbeddings.concat(aggregated))


def _rows(store: Store) -> list[dict]:
    """All tracklet rows sorted by id."""
    return sorted(store.list_tracklets().to_pylist(), key=lambda row: row["track_id"])


def test_rewriting_a_video_keeps_one_row_per_tracklet_and_drops_stale_ones(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    v1, v2 = video_row("video-one-0001"), video_row("video-two-0002")
    detections, tracklets = _batch(v1, tracks=3, per_track=4)
    store.write_video(v1, detections, tracklets)
    store.write_video(v2, *_batch(v2, tracks=2, per_track=2, seed=1))
    first = _rows(store)
    assert store.count_tracklets() == 5 and store.count_tracklets(v1["video_id"]) == 3
    assert store.write_video(v1, detections, tracklets) == 0  # a re-run: same rows, no duplicates
    assert _rows(store) == first
    row = store.list_tracklets(f"track_id = '{v1['video_id'][:12]}-t2'").to_pylist()[0]
    assert (row["n_detections"], row["t_end"], row["thumbnail"], row["best_detection_id"]) == (
        4, 1_000.6, b"thumb-1", f"{v1['video_id']}:0000000:001")
    np.testing.assert_allclose(row["vector"], tracklets["vector"][1].as_py())

    fewer_detections, fewer = _batch(v1, tracks=2, per_track=4, seed=2)
    store.write_video(v1, fewer_detections, fewer.to_pylist())  # dict rows work too
    assert store.count_tracklets(v1["video_id"]) == 2 and store.count_tracklets(v2["video_id"]) == 2
    assert {r["track_id"] for r in _rows(store) if r["video_id"] == v1["video_id"]} == {"video-one-00-t1", "video-one-00-t2"}
    assert store.list_tracklets(limit=3, columns=["track_id"]).column_names == ["track_id"]
    store.write_video(v1, fewer_detections)  # no tracklets: the video has none any more
    assert store.count_tracklets(v1["video_id"]) == 0 and store.count_tracklets() == 2
    assert v1["video_id"] in store.done_video_ids(MODEL)


def test_a_store_without_a_tracklets_table_reads_as_none_and_maintain_compacts_it(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    video = video_row("video-old-0001")
    detections, tracklets = _batch(video, tracks=2, per_track=3)
    store.write_video(video, detections)
    assert TRACKLETS not in lancedb.connect(str(tmp_path / "db")).list_tables().tables
    reader = Store.open(tmp_path / "db", create=False)
    assert reader.count_tracklets() == 0 and reader.list_tracklets().num_rows == 0
    report = reader.maintain()
    assert report["tracklets"] == 0 and not any(name.startswith("tracklets.") for name in report["indexes"])
    for i in range(3):
        other = video_row(f"{i:04d}-video-new")
        store.write_video(other, *_batch(other, tracks=2, per_track=3, seed=i))
    report = store.maintain(cleanup_older_than=None)
    assert report["tracklets"] == 6 and report["indexes"]["tracklets.track_id"]["indexed_rows"] == 6
    assert lancedb.connect(str(tmp_path / "db")).open_table(TRACKLETS).stats()["fragment_stats"]["num_fragments"] == 1
    assert Store.open(tmp_path / "db", create=False).count_tracklets("0001-video-new") == 2


def test_bad_tracklets_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    video = video_row("video-bad-0001")
    detections, tracklets = _batch(video, tracks=2, per_track=3)
    with pytest.raises(StoreError, match="tracklets carry another video_id"):
        store.write_video(video, detections, _batch(video_row("video-xyz-0002"), tracks=1, per_track=3)[1])
    with pytest.raises(StoreError, match="duplicate track_id"):
        store.write_video(video, detections, pa.concat_tables([tracklets, tracklets]))
    assert store.count_detections() == 0 and store.done_video_ids(MODEL) == set()
    store.write_video(video, detections, tracklets)
    rows = [tracklet_row("t-x", video["video_id"], "cam-1", 0.0, 1.0, 1, None, None, MODEL)]
    narrow = tracklets_table(rows, random_embeddings(np.random.default_rng(0), 1, PARTS, 8, random_visibility=True))
    with pytest.raises(StoreError, match="tracklets have D=8, K=6 but its detections D=32, K=6"):
        store.write_video(video, detections, narrow)
    with pytest.raises(StoreError, match="D=32, K=6; refusing tracklets with D=8"):
        store.write_video(video, [], narrow)
    with pytest.raises(StoreError, match="t_start 2.0 is after t_end 1.0"):
        tracklet_row("t-y", video["video_id"], "cam-1", 2.0, 1.0, 1, None, None, MODEL)
    assert store.count_tracklets() == 2
