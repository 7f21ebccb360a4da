"""End to end through the `kpr` CLI with the real components: Prefect flow, local Ray, decord, LanceDB."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from pipelines.cli import main
from storage import Store
from workers.decode import probe_video, sample_indices

pytestmark = pytest.mark.integration


def _expected_detections(archive, fps: float) -> int:
    """Annotated people at the frames that ingestion samples, summed over the archive's videos."""
    total = 0
    for video in sorted(archive.rglob("*.mp4")):
        sidecar = json.loads(video.with_suffix(".json").read_text())
        info = probe_video(video)
        sampled = set(sample_indices(info.num_frames, info.fps, fps).tolist())
        total += sum(len(f["detections"]) for f in sidecar["frames"] if f["frame_index"] in sampled)
    return total


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
    expected = _expected_detections(archive, 5.0)
    assert expected > 0 and store.count_detections() == expected
    ids = store.query_detections(None, columns=["detection_id"])["detection_id"].to_pylist()
    assert len(set(ids)) == len(ids)


def test_second_run_writes_nothing_and_says_so(ingested, tiny_checkpoint, capsys):
    archive, db, _ = ingested
    before = Store.open(str(db)).count_detections()
    capsys.readouterr()
    assert main(["ingest", str(archive), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress"]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert Store.open(str(db)).count_detections() == before


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
    assert store.count_detections() == _expected_detections(small_archive, 5.0)


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
    _one_error_line(capsys, "the store holds embeddings of")


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
