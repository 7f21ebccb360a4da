"""Ray stages on real Ray, decord and a tiny KPR model: segmenting, failures, backpressure."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.backends import BackendConfig
from workers.decode import probe_video, sample_indices
from workers.discover import discover_videos, list_video_files
from workers.errors import WorkerError
from workers.ingest_options import IngestOptions
from workers.ray_stages import StageStats, ensure_ray, run_videos


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ensure_ray(num_cpus=2)


def _ingest(archive, model, **options) -> tuple[dict, StageStats]:
    stats, tasks = StageStats(), discover_videos(list_video_files(archive))
    return {o.task.uri: o for o in run_videos(tasks, str(model), IngestOptions(**options), stats)}, stats


def _annotated(video) -> list[int]:
    """Frame indices of the annotated people at the frames sampled at 5 fps, one entry per person."""
    info = probe_video(video)
    sampled = set(sample_indices(info.num_frames, info.fps, 5.0).tolist())
    frames = json.loads(video.with_suffix(".json").read_text())["frames"]
    return sorted(f["frame_index"] for f in frames if f["frame_index"] in sampled for _ in f["detections"])


def test_segmented_ingestion_equals_whole_video_ingestion(small_archive, tiny_checkpoint):
    whole, _ = _ingest(small_archive, tiny_checkpoint, segment_s=1e6)
    segmented, _ = _ingest(small_archive, tiny_checkpoint, segment_s=1.5, batch_frames=4)
    assert whole.keys() == segmented.keys() and len(whole) == 3
    for uri, one in whole.items():
        many = segmented[uri]
        assert one.error is None and many.error is None
        assert [r.frame_index for r in one.result.records] == _annotated(Path(uri))
        assert [r.detection_id for r in many.result.records] == [r.detection_id for r in one.result.records]
        assert [r.timestamp for r in many.result.records] == [r.timestamp for r in one.result.records]
        assert many.result.frames_sampled == one.result.frames_sampled == 40
        np.testing.assert_allclose(many.result.embeddings.parts, one.result.embeddings.parts, atol=1e-5)
        assert [t.track_id for t in many.result.tracklets] == [t.track_id for t in one.result.tracklets]
        assert len(one.result.tracklets) >= 2


def test_corrupt_videos_fail_alone_with_their_reason(small_archive, tiny_checkpoint, tmp_path):
    good, damaged = sorted(small_archive.rglob("*.mp4"))[:2]
    for video in (good, damaged):
        (tmp_path / video.parent.name).mkdir()
        shutil.copy(video.with_suffix(".json"), tmp_path / video.parent.name)
    shutil.copy(good, tmp_path / good.parent.name)
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = b"\xff" * 4096  # frames after the first half no longer decode
    (tmp_path / damaged.parent.name / damaged.name).write_bytes(bytes(data))
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)

    outcomes, _ = _ingest(tmp_path, tiny_checkpoint, segment_s=2.0)
    by_name = {uri.split("/")[-1] if "junk" in uri else uri.split("/")[-2]: o for uri, o in outcomes.items()}
    assert by_name[good.parent.name].error is None
    assert [r.frame_index for r in by_name[good.parent.name].result.records] == _annotated(good)
    assert "decoding failed at frame" in by_name[damaged.parent.name].error
    assert "junk.mp4: cannot decode video" in by_name["junk.mp4"].error
    assert all("\n" not in o.error for o in outcomes.values() if o.error)


def test_backpressure_bounds_live_frame_batches(small_archive, tiny_checkpoint, tmp_path):
    video = sorted(small_archive.rglob("*.mp4"))[0]
    for path in (video, video.with_suffix(".json")):
        shutil.copy(path, tmp_path)
    outcomes, stats = _ingest(tmp_path, tiny_checkpoint, segment_s=1.0, batch_frames=2, max_batches_in_flight=3)
    (outcome,) = outcomes.values()
    assert outcome.error is None and [r.frame_index for r in outcome.result.records] == _annotated(video)
    assert stats.frames == 40 and stats.crops == len(outcome.result.records)
    assert stats.peak_batches_alive == 3  # 20 batches went through, never more than 3 alive at once


def test_unusable_options_give_one_clear_error(small_archive, tiny_checkpoint):
    with pytest.raises(WorkerError, match="max_batches_in_flight must be at least 2"):
        IngestOptions(max_batches_in_flight=1)
    with pytest.raises(WorkerError, match="unknown detection backend 'nope'"):
        IngestOptions(backend=BackendConfig(name="nope"))
    with pytest.raises(WorkerError, match="device must be 'cpu' or 'cuda"):
        IngestOptions(device="tpu")
    if not torch.cuda.is_available():
        tasks = discover_videos(list_video_files(small_archive))
        with pytest.raises(WorkerError, match="the Ray cluster has no GPU"):
            list(run_videos(tasks, str(tiny_checkpoint), IngestOptions(device="cuda")))


def _decoders_reading(video: Path) -> list[int]:
    """PIDs of Ray decode workers (process title ``ray::_decode``) that have ``video`` open."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::_decode") and any(
                    os.readlink(fd) == str(video) for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def test_a_decode_worker_that_dies_fails_only_its_video(shared_data, small_archive, tiny_checkpoint, tmp_path):
    """decord runs only in Ray decode tasks: a decode process killed mid-video (as a decord crash would kill it)
    fails that video with a reason, and the other video of the run is ingested."""
    real, synthetic = (shared_data / "video" / "one-by-one-person-detection.mp4").resolve(), sorted(small_archive.rglob("*.mp4"))[0]
    for camera, video in (("table", real), ("synth", synthetic)):
        (tmp_path / camera).mkdir()
        (tmp_path / camera / video.name).symlink_to(video)
    killed: list[int] = []
    stop = threading.Event()

    def kill_the_decoder() -> None:
        while not (stop.is_set() or killed):
            for pid in _decoders_reading(real):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_decoder, daemon=True)
    killer.start()
    backend = BackendConfig("yolox", detector_model=str(shared_data / "models" / "yolox_nano_416x416.onnx"))
    try:
        tasks = discover_videos(list_video_files(tmp_path))
        outcomes = {Path(o.task.uri).name: o
                    for o in run_videos(tasks, str(tiny_checkpoint), IngestOptions(segment_s=1e6, backend=backend))}
    finally:
        stop.set()
        killer.join()
    assert killed, "no decode worker of the real video was seen"
    assert outcomes[real.name].result is None
    assert outcomes[real.name].error == "the worker process crashed while processing this video"
    assert outcomes[synthetic.name].error is None and outcomes[synthetic.name].result.frames_sampled == 40


def test_a_local_ray_starts_with_token_authentication_and_without_a_warning_about_it():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    script = "import os, ray; from workers.ray_stages import ensure_ray; ensure_ray(num_cpus=1); print(os.environ['RAY_AUTH_MODE'])"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["token"] and "Token authentication" not in run.stderr
