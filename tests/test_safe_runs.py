"""Safe runs of `kpr ingest`: Ctrl-C from a terminal, and every mistake caught in one line before any work starts.

Each command runs as a user runs it: the `kpr` script in a process group of its own, SIGINT sent to the whole
group as a terminal does.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ingest_search import sampled_annotations

from storage import Store, StoreError
from support import free_port

pytestmark = pytest.mark.integration

KPR = Path(sys.executable).parent / "kpr"
MOVENET = "movenet_singlepose_lightning_int8.tflite"
YOLOX = "yolox_nano_416x416.onnx"
REID = "person-reidentification-retail-0248.onnx"
CHECK_BOUND_S = 20  # generous: each check takes about a second, where the mistakes used to surface after 20 s or more
STOP_BOUND_S = 10


def _start(args: list[str], env: dict | None = None, stderr=subprocess.PIPE) -> subprocess.Popen:
    """`kpr ARGS` in a session of its own, with SIGINT handled as in a terminal (even when this test runs where
    SIGINT is ignored, as in a background job), stderr to ``stderr``."""
    return subprocess.Popen([str(KPR), *args], stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _kpr(args: list[str], env: dict | None = None, timeout_s: float = CHECK_BOUND_S) -> tuple[int, list[str], float]:
    """Exit code, stderr lines and seconds of one `kpr` command."""
    started = time.monotonic()
    process = _start(args, env)
    try:
        _, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"kpr {' '.join(args)} still running after {timeout_s} s")
    return process.returncode, err.strip().splitlines(), time.monotonic() - started


def _one_line(code: int, err: list[str], expected: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("kpr ingest: error: ") and expected in err[0], err


@pytest.fixture(scope="module")
def plain_archive(small_archive, tmp_path_factory) -> Path:
    """The small archive's videos without their annotation files, as from a plain CCTV recorder."""
    out = tmp_path_factory.mktemp("plain")
    for video in small_archive.rglob("*.mp4"):
        (out / video.parent.name).mkdir(exist_ok=True)
        shutil.copy(video, out / video.parent.name / video.name)
    return out


WRONG_FILES = [
    (["--backend", "yolox", "--detector-model", "{models}/" + MOVENET], "a TFLite model, not a YOLOX ONNX detector"),
    (["--backend", "yolox", "--detector-model", "{models}/" + REID], "not a YOLOX detector: input [1, 256, 128, 3]"),
    (["--backend", "yolox", "--detector-model", "{models}/" + YOLOX, "--pose-model", "{models}/" + YOLOX],
     "not a TFLite model; the pose model is a MoveNet SinglePose .tflite"),
    (["--pose-model", "{models}/" + REID], "not a TFLite model"),
]


@pytest.mark.parametrize(("args", "expected"), WRONG_FILES, ids=[e for _, e in WRONG_FILES])
def test_a_model_file_of_the_wrong_kind_is_one_line_before_any_work(shared_data, small_archive, tiny_checkpoint,
                                                                     tmp_path, args, expected):
    db = tmp_path / "db"
    models = shared_data / "models"
    code, err, seconds = _kpr(["ingest", str(small_archive), "--db", str(db), "--model", str(tiny_checkpoint),
                               *[a.format(models=models) for a in args]])
    _one_line(code, err, expected)
    assert seconds < CHECK_BOUND_S and not db.exists()


def test_a_missing_cuda_device_is_one_line(small_archive, tiny_checkpoint, tmp_path):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a CUDA device")
    code, err, _ = _kpr(["ingest", str(small_archive), "--db", str(tmp_path / "db"), "--model", str(tiny_checkpoint),
                         "--device", "cuda"], env={"RAY_ADDRESS": ""})
    _one_line(code, err, "--device cuda: this machine has no CUDA device; use --device cpu")


def test_plain_videos_are_told_which_backend_to_pass(plain_archive, tiny_checkpoint, tmp_path):
    db = tmp_path / "db"
    code, err, _ = _kpr(["ingest", str(plain_archive), "--db", str(db), "--model", str(tiny_checkpoint)],
                        env={"KPR_DETECTOR_MODEL": "", "KPR_POSE_MODEL": ""})
    _one_line(code, err, "none of the 3 videos has an annotation file")
    assert "--backend yolox --detector-model" in err[0] and "KPR_DETECTOR_MODEL" in err[0] and not db.exists()


def test_configured_detector_files_pick_the_yolox_backend(shared_data, plain_archive, tiny_checkpoint, tmp_path):
    models = shared_data / "models"
    env = {"KPR_DETECTOR_MODEL": str(models / MOVENET), "KPR_POSE_MODEL": str(models / MOVENET)}
    code, err, _ = _kpr(["ingest", str(plain_archive), "--db", str(tmp_path / "db"), "--model", str(tiny_checkpoint)],
                        env=env)
    _one_line(code, err, f"{models / MOVENET}: a TFLite model, not a YOLOX ONNX detector")  # the file it was given
    code, err, _ = _kpr(["ingest", str(plain_archive), "--db", str(tmp_path / "db"), "--model", str(tiny_checkpoint),
                         "--backend", "annotations"], env=env)
    _one_line(code, err, "has an annotation file")  # an explicit --backend wins


def test_an_unreachable_ray_cluster_is_one_line_in_seconds(small_archive, tiny_checkpoint, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    code, err, _ = _kpr(["ingest", str(small_archive), "--db", str(tmp_path / "db"), "--model", str(tiny_checkpoint),
                         "--ray-address", address])
    _one_line(code, err, f"cannot reach the Ray cluster at {address}: Connection refused")
    code, err, _ = _kpr(["ingest", str(small_archive), "--db", str(tmp_path / "db"), "--model", str(tiny_checkpoint)],
                        env={"RAY_ADDRESS": "no-such-head"})
    _one_line(code, err, "Ray address 'no-such-head' is not HOST:PORT")


# --- Ctrl-C ---

@pytest.fixture(scope="module")
def six_videos(tmp_path_factory) -> Path:
    """Six short synthetic videos with annotation files: a run long enough to be interrupted in the middle."""
    from training.synthetic import WorldConfig, generate_archive

    out = tmp_path_factory.mktemp("six")
    generate_archive(out, WorldConfig(seed=5, n_identities=6, n_cameras=6, duration_s=8.0, fps=10.0, width=320,
                                      height=192, walkers_per_frame=2.0, occluders_per_camera=1))
    return out


def _interrupted(archive: Path, db: Path, model: Path, presses: int) -> tuple[int, str, float, int]:
    """Start `kpr ingest`, press Ctrl-C ``presses`` times (0.3 s apart) once a first video is committed; exit code,
    what it wrote to stderr after the first press, seconds from the first press to its exit, videos done then."""
    log = db.parent / "stderr.txt"
    with log.open("w") as stderr:
        process = _start(["ingest", str(archive), "--db", str(db), "--model", str(model), "--no-progress",
                          "--batch-frames", "4", "--max-batches-in-flight", "2"], stderr=stderr)
    deadline = time.monotonic() + 300
    try:
        while not _videos_done(db):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        before, pressed = len(log.read_text()), time.monotonic()
        for press in range(presses):
            time.sleep(0.3 * bool(press))
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        process.wait(STOP_BOUND_S + 20)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, log.read_text()[before:], time.monotonic() - pressed, _videos_done(db)


def _videos_done(db: Path) -> int:
    """Videos the store at ``db`` holds as done (0 while it is not made yet)."""
    try:
        return Store.open(str(db), create=False).count_videos(status="done")
    except StoreError:
        return 0


def test_ctrl_c_stops_ingest_in_seconds_and_a_rerun_resumes(six_videos, tiny_checkpoint, tmp_path):
    db = tmp_path / "db"
    code, err, stopped, done = _interrupted(six_videos, db, tiny_checkpoint, presses=1)
    assert code == 130 and stopped < STOP_BOUND_S, (stopped, err)
    assert err.strip().splitlines() == [f"kpr ingest: interrupted: {done} video(s) committed by this run, each whole; "
                                        f"re-run the same command to resume"]
    assert 1 <= done < 6
    code, err, _ = _kpr(["ingest", str(six_videos), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress"],
                        timeout_s=300)
    assert code == 0, err
    store = Store.open(str(db), create=False)
    detections, tracklets = sampled_annotations(six_videos, 5.0)
    assert store.count_videos(status="done") == 6
    assert store.count_detections() == detections and store.count_tracklets() == tracklets  # each video once, whole


def test_a_second_ctrl_c_exits_at_once(six_videos, tiny_checkpoint, tmp_path):
    code, err, stopped, _ = _interrupted(six_videos, tmp_path / "db", tiny_checkpoint, presses=2)
    assert code == 130 and stopped < 5, (stopped, err)
    lines = err.strip().splitlines()  # the first press's line when its work had stopped before the second press
    assert lines[-1] == "kpr ingest: interrupted again: stopped at once; re-run to resume"
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("kpr ingest: interrupted: ")), lines
