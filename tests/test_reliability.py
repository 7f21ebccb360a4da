"""Ingestion reliability: SIGKILL and re-run, concurrent writers, corrupt inputs.

The ingestions are the real `kpr ingest` (Prefect flow, local Ray, decord, LanceDB) in subprocesses of
their own session. Stores are compared with what the workers compute for the same archive (ids and
embeddings). The helpers, and the full campaign (every kill point, repeats, figures), live in
bench.reliability.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import reliability as rel
from storage import Store, StoreError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def expected(small_archive, tiny_checkpoint) -> rel.Snapshot:
    """What a store of the small archive must hold: the workers' own decode + embed of it, without Ray or a store."""
    return rel.expected_snapshot(small_archive, tiny_checkpoint)


def test_killed_during_a_commit_then_run_twice_at_once(small_archive, tiny_checkpoint, expected, tmp_path):
    """The issue's story on an archive with bad files: killed, restarted, and run twice; every row still once."""
    archive = tmp_path / "archive"
    shutil.copytree(small_archive, archive)
    bad = rel.add_corrupt_inputs(archive)
    db = tmp_path / "db"
    killed = rel.Ingest(archive, db, tiny_checkpoint, tmp_path / "killed.log")
    assert rel.kill_when(killed, *rel.kill_condition("commit_manifest", db, 1)) is not None, killed.output
    assert killed.session_pids() == []  # nothing of the killed run is left, Ray's workers included
    after_kill = rel.store_state(db)
    assert after_kill["rows"] > 0 and after_kill["videos_done"] < len(expected.videos), after_kill

    reruns = [rel.Ingest(archive, db, tiny_checkpoint, tmp_path / f"rerun{i}.log") for i in range(2)]
    codes = [ingest.wait() for ingest in reruns]
    outputs = [ingest.output for ingest in reruns]
    assert codes == [1, 1], outputs  # some videos failed; neither run crashed
    assert not any("Traceback" in out for out in outputs), outputs

    report = rel.compare(expected, rel.store_snapshot(db))
    assert rel.exactly_once(report), str(report)  # good rows once with the workers' embeddings, one row per video
    failed = {Path(row["uri"]).name: row["error"] for row in Store.open(db, create=False).video_rows(status="failed")}
    assert set(failed) == set(bad) and all(failed.values()), failed
    assert "empty file" in failed["zero_bytes.mp4"]
    assert "declares 50 frames" in failed["truncated.avi"]
    assert "Mpx limit" in failed["huge.avi"]
    assert "no sidecar" in failed["sidecar_missing.mp4"]
    assert "not a readable JSON" in failed["sidecar_deep_nesting.mp4"]


def test_two_writers_committing_the_same_new_videos_at_once_store_each_row_once(tmp_path):
    race = rel.commit_race(tmp_path / "db", videos=3, rows=200)
    assert race["exit_codes"] == [0, 0]
    assert race["rows"] == race["expected_rows"] == 600
    assert race["duplicate_rows"] == race["duplicate_video_rows"] == 0


def test_a_table_whose_creation_was_killed_is_created_again(tmp_path):
    db = tmp_path / "db"
    # What SIGKILL during a table's creation leaves (bench/reliability.py creation_kills): a folder, no version.
    (db / "videos.lance" / "_transactions").mkdir(parents=True)
    with pytest.raises(StoreError, match="no store"):
        Store.open(db, create=False)
    store = Store.open(db)
    (db / "detections.lance" / "_transactions").mkdir(parents=True)
    video, detections = rel.race_video(0, rows=5)
    assert store.write_video(video, detections) == 5
    reopened = Store.open(db, create=False)
    assert reopened.count_detections() == 5 and reopened.done_video_ids("race-model") == {"race0"}
