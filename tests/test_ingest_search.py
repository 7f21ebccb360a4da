"""End to end through the `kpr` CLI with the real components: Prefect flow, local Ray, decord, LanceDB."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import ray.exceptions
from prefect.states import Failed

from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.flows import IngestSummary, ingest_videos, is_transient, retry_if_transient
from pipelines.ingest_inputs import IngestInputs
from storage import Store, StoreError
from workers.decode import probe_video, sample_indices
from workers.discover import discover_videos
from workers.errors import WorkerError
from workers.ingest_options import IngestOptions

pytestmark = pytest.mark.integration


def sampled_annotations(archive, fps: float) -> tuple[int, int]:
    """Annotated people, and distinct annotated tracks, at the frames that ingestion samples, over the archive."""
    detections = tracks = 0
    for video in sorted(archive.rglob("*.mp4")):
        sidecar = json.loads(video.with_suffix(".json").read_text())
        info = probe_video(video)
        sampled = set(sample_indices(info.num_frames, info.fps, fps).tolist())
        people = [d for f in sidecar["frames"] if f["frame_index"] in sampled for d in f["detections"]]
        detections += len(people)
        tracks += len({d["track_id"] for d in people})
    return detections, tracks


def _one_error_line(capsys, expected: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert expected in err[0] and "Traceback" not in err[0]


@pytest.fixture(scope="module")
def ingested(small_archive, tiny_checkpoint, tmp_path_factory):
    """The small archive ingested once into a fresh store; returns (archive, db, first exit code)."""
    db = tmp_path_factory.mktemp("store") / "db"
    code = main(["ingest", str(small_archive), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress"])
    return small_archive, db, code


def test_ingest_writes_every_sampled_detection_once(ingested):
    archive, db, code = ingested
    assert code == 0
    store = Store.open(str(db), create=False)
    n_videos = len(list(archive.rglob("*.mp4")))
    assert store.count_videos(status="done") == n_videos
    detections, tracklets = sampled_annotations(archive, 5.0)
    assert detections > 0 and store.count_detections() == detections
    ids = store.query_detections(None, columns=["detection_id"])["detection_id"].to_pylist()
    assert len(set(ids)) == len(ids)
    assert store.count_tracklets() == tracklets


def test_second_run_writes_nothing_and_says_so(ingested, tiny_checkpoint, capsys):
    archive, db, _ = ingested
    before = Store.open(str(db)).count_detections()
    capsys.readouterr()
    assert main(["ingest", str(archive), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress"]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert Store.open(str(db)).count_detections() == before


def test_a_run_lists_the_archive_opens_the_store_and_reads_the_model_id_once(ingested, tiny_checkpoint, monkeypatch):
    import pipelines.ingest_inputs

    archive, db, _ = ingested
    calls = []

    def counted(name, function):
        def call(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(Store, "open", counted("store", Store.open))
    monkeypatch.setattr(pipelines.ingest_inputs, "model_facts", counted("model_id", pipelines.ingest_inputs.model_facts))
    monkeypatch.setattr(pipelines.ingest_inputs, "list_video_files",
                        counted("listing", pipelines.ingest_inputs.list_video_files))
    assert main(["ingest", str(archive), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress"]) == 0
    assert sorted(calls) == ["listing", "model_id", "store"]


def test_stored_tracklets_hold_the_aggregate_of_their_detections_and_answer_tracklet_queries(ingested):
    from kpr_model.distance import aggregate
    from storage import PersonSearch, SearchFilters, embeddings_of

    _, db, _ = ingested
    store = Store.open(str(db), create=False)
    search = PersonSearch(store)
    for row in store.list_tracklets(limit=5).to_pylist():
        detections = store.tracklet_detections(row["track_id"])
        assert detections.num_rows == row["n_detections"]
        expected = aggregate(embeddings_of(detections))
        # both sides went through the int8 part codec: within a quantisation step (<= 1/127) of each other
        np.testing.assert_allclose(embeddings_of([row]).parts, expected.parts, rtol=0, atol=1 / 127)
        hits = search.by_tracklet(row["track_id"], k=5)
        assert hits and all(h.camera_id != row["camera_id"] and h.track_id != row["track_id"] for h in hits)
        recomputed = search.search(expected, k=5, filters=SearchFilters(exclude_cameras=[row["camera_id"]],
                                                                         exclude_track_ids=[row["track_id"]]))
        assert [h.detection_id for h in hits] == [h.detection_id for h in recomputed]


def test_a_run_that_fails_for_good_still_publishes_its_report(small_archive, tiny_checkpoint, tmp_path):
    """A store of 8-d embeddings under the tiny model's id (a damaged store: the model check passes) refuses its
    32-d rows: a permanent error ends the run, with a report."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from kpr_model.embeddings import ReIDEmbeddings
    from kpr_model.model_facts import model_facts
    from pipelines.flows import ingest_archive
    from storage import detection_row, detections_table

    db = tmp_path / "db"
    model_id = model_facts(tiny_checkpoint).model_id
    other = {"video_id": "other", "uri": "/elsewhere/other.mp4", "camera_id": "cam9", "start_time": 0.0,
             "duration": 1.0, "num_frames": 10, "model_id": model_id, "run_id": "r"}
    row = detection_row("other:0", "other", "cam9", 0, 0.0, (0.0, 0.0, 10.0, 20.0), model_id, 1.0,
                        np.zeros((17, 3)), "", b"", "r")
    unit = np.ones((1, 8), np.float32) / np.sqrt(8)
    Store.open(str(db)).write_video(other, detections_table([row], ReIDEmbeddings(unit, np.stack([unit] * 8, 1),
                                                                                  np.ones((1, 8), np.float32))))
    state = ingest_archive(IngestInputs(str(small_archive), str(db), str(tiny_checkpoint)), progress=False,
                           return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    report = {a.key: a for a in artifacts}["ingest-report"].data
    counts = report.splitlines()[3]  # found, skipped, done, failed, detections, tracklets ... attempts
    assert counts.startswith("| 3 | 0 | 0 | 0 | 0 | 0 |") and counts.endswith("| 1 |"), report  # not retried
    assert "**Run aborted**: StoreError: " in report and "holds embeddings with D=8" in report, report
    assert Store.open(str(db), create=False).count_detections() == 1


def test_search_by_detection_returns_other_cameras(ingested, tmp_path, capsys):
    _, db, _ = ingested
    store = Store.open(str(db), create=False)
    row = store.query_detections(None, columns=["detection_id", "camera_id"], limit=1).to_pylist()[0]
    capsys.readouterr()
    page = tmp_path / "hits.html"
    assert main(["search", "--db", str(db), "--detection", row["detection_id"], "-k", "5", "--html", str(page)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    hits = [line.split() for line in lines[1:]]
    assert len(hits) == 5
    assert all(h[2] != row["camera_id"] for h in hits)
    distances = [float(h[1]) for h in hits]
    assert distances == sorted(distances)
    assert page.read_text().count("<img") == 6
    other = hits[0][2]
    assert main(["search", "--db", str(db), "--detection", row["detection_id"], "--camera", other]) == 0
    assert {line.split()[2] for line in capsys.readouterr().out.strip().splitlines()[1:]} == {other}


def test_search_by_image_with_keypoints(ingested, tiny_checkpoint, tmp_path, capsys):
    _, db, _ = ingested
    crop = tmp_path / "q.png"
    cv2.imwrite(str(crop), np.full((96, 48, 3), 120, np.uint8))
    prompt = tmp_path / "kp.json"
    prompt.write_text(json.dumps([[24, 10 + 4 * i, 1.0] for i in range(17)]))
    capsys.readouterr()
    assert main(["search", "--db", str(db), "--image", str(crop), "--keypoints", str(prompt),
                 "--model", str(tiny_checkpoint), "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


def test_unreadable_video_is_recorded_and_the_rest_ingested(small_archive, tiny_checkpoint, tmp_path, capsys):
    archive = tmp_path / "archive"
    shutil.copytree(small_archive, archive)
    camera = sorted(p for p in archive.iterdir() if p.is_dir())[0]
    (camera / "broken.mp4").write_bytes(b"\x00\x01garbage" * 1000)
    (camera / "empty.mp4").write_bytes(b"")
    db = tmp_path / "db"
    code = main(["ingest", str(archive), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "empty.mp4" in err and "Traceback" not in err
    store = Store.open(str(db), create=False)
    failed = {r["uri"].rsplit("/", 1)[-1]: r["error"] for r in store.video_rows(status="failed")}
    assert set(failed) == {"broken.mp4", "empty.mp4"} and "empty file" in failed["empty.mp4"]
    assert store.count_videos(status="done") == len(list(small_archive.rglob("*.mp4")))
    assert (store.count_detections(), store.count_tracklets()) == sampled_annotations(small_archive, 5.0)

    # What a retry of the ingest task does on this store: only videos neither done nor already failed in its run.
    inputs = IngestInputs(str(archive), str(db), str(tiny_checkpoint))
    tasks = discover_videos(inputs.videos)
    reported = [(row["uri"], row["error"]) for row in store.video_rows(status="failed")]
    retry = ingest_videos(tasks, inputs, IngestOptions(), None, IngestSummary("retry", failures=reported), False)
    assert (retry.attempts, retry.videos_done, retry.videos_failed) == (1, 0, 0)
    fresh = ingest_videos(tasks, inputs, IngestOptions(), None, IngestSummary("fresh"), False)
    assert (fresh.videos_done, sorted(Path(uri).name for uri, _ in fresh.failures)) == (0, ["broken.mp4", "empty.mp4"])


def test_only_transient_errors_retry_the_ingest_task():
    transient = [ConnectionResetError("peer reset"), TimeoutError(), OSError(5, "object store: I/O error"),
                 ray.exceptions.NodeDiedError("node lost"), ray.exceptions.ActorDiedError(),
                 ray.exceptions.RaySystemError("gcs unreachable")]
    permanent = [FileNotFoundError("archive"), PermissionError("db"), WorkerError("no model"), StoreError("schema"),
                 UserError("bad option"), ValueError("bug"),
                 ray.exceptions.RayTaskError("detect", "tb", WorkerError("no model")).as_instanceof_cause()]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)
    assert ingest_videos.retries == 2 and ingest_videos.retry_condition_fn is retry_if_transient
    assert retry_if_transient(ingest_videos, None, Failed(data=ConnectionResetError()))
    assert not retry_if_transient(ingest_videos, None, Failed(data=WorkerError("no model")))


def test_user_mistakes_give_one_line_and_exit_2(ingested, tiny_checkpoint, tmp_path, capsys):
    archive, db, _ = ingested
    model = str(tiny_checkpoint)
    assert main(["ingest", str(tmp_path / "missing"), "--db", str(tmp_path / "d"), "--model", model]) == 2
    _one_error_line(capsys, "archive not found")
    (tmp_path / "empty").mkdir()
    assert main(["ingest", str(tmp_path / "empty"), "--db", str(tmp_path / "d"), "--model", model]) == 2
    _one_error_line(capsys, "no video files")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["ingest", str(archive), "--db", str(blocker / "db"), "--model", model]) == 2
    _one_error_line(capsys, str(blocker))
    assert main(["ingest", str(archive), "--db", str(tmp_path / "d2"), "--model", str(tmp_path / "nomodel")]) == 2
    _one_error_line(capsys, "nomodel")
    assert main(["search", "--db", str(db), "--detection", "no-such-id"]) == 2
    _one_error_line(capsys, "unknown detection id")
    not_image = tmp_path / "q.jpg"
    not_image.write_text("hello")
    assert main(["search", "--db", str(db), "--image", str(not_image), "--model", model]) == 2
    _one_error_line(capsys, "cannot read query image")
    assert main(["search", "--db", str(tmp_path / "nostore"), "--detection", "x"]) == 2
    _one_error_line(capsys, "no store")
    assert main(["search", "--db", str(db), "--detection", "x", "--since", "yesterday"]) == 2
    _one_error_line(capsys, "not a time")


def test_query_model_must_match_the_store(ingested, tmp_path, capsys):
    import torch

    from kpr_model.checkpoint import save_checkpoint
    from kpr_model.config import KPRConfig
    from kpr_model.model import KPR

    _, db, _ = ingested
    torch.manual_seed(1)
    other = tmp_path / "other"
    save_checkpoint(KPR(KPRConfig.tiny(embed_dim=16)).eval(), KPRConfig.tiny(embed_dim=16), other)
    crop = tmp_path / "q.png"
    cv2.imwrite(str(crop), np.full((64, 32, 3), 90, np.uint8))
    assert main(["search", "--db", str(db), "--image", str(crop), "--model", str(other)]) == 2
    _one_error_line(capsys, "query with the model the store was built with")


def test_ingest_with_an_exported_onnx_model_matches_pytorch(ingested, tiny_checkpoint, tmp_path):
    from kpr_model.export import export_checkpoint_onnx

    archive, db, _ = ingested
    onnx_path = tmp_path / "tiny.onnx"
    model_id = export_checkpoint_onnx(tiny_checkpoint, onnx_path)
    onnx_db = tmp_path / "onnx_db"
    assert main(["ingest", str(archive), "--db", str(onnx_db), "--model", str(onnx_path), "--no-progress"]) == 0
    torch_rows = Store.open(str(db)).query_detections(None, columns=["detection_id", "vector", "model_id"])
    onnx_rows = Store.open(str(onnx_db)).query_detections(None, columns=["detection_id", "vector", "model_id"])
    assert set(onnx_rows["model_id"].to_pylist()) == {model_id} == set(torch_rows["model_id"].to_pylist())
    by_id = dict(zip(torch_rows["detection_id"].to_pylist(), torch_rows["vector"].to_pylist()))
    onnx_vectors = dict(zip(onnx_rows["detection_id"].to_pylist(), onnx_rows["vector"].to_pylist()))
    assert onnx_vectors.keys() == by_id.keys()
    worst = max(np.abs(np.subtract(onnx_vectors[i], by_id[i])).max() for i in by_id)
    assert worst < 1e-4
