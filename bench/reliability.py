"""Reliability campaign of `kpr ingest`: kill and resume, concurrent ingestions, corrupt inputs.

Every ingestion is the real CLI (`kpr ingest`: Prefect flow, local Ray, decord, LanceDB) in a
subprocess with a session of its own, so a kill (SIGKILL to its process group, then to every
leftover process of its session, Ray's workers included) takes down all of it. Stores are compared
with the detections that the workers compute for the same archive in this process (ids and
embeddings), and with an uninterrupted CLI run. Writes bench/results/reliability.json; see
bench/README.md. Example, from the repository root:
    .venv/bin/python -m bench.reliability --workdir /tmp/kpr_reliability
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.results_io import RESULTS, command_line, write_result
from kpr_model.distance import ReIDEmbeddings
from kpr_model.keypoints import SIDECAR_FORMAT
from storage import Store, StoreError, detection_row, detections_table, embeddings_of
from storage.part_codec import CODE_MAX
from workers.records import detection_id

ROOT = Path(__file__).resolve().parents[1]
KPR_CLI = Path(sys.executable).with_name("kpr")
KILL_POINTS = ("decode", "embed", "commit_data", "commit_manifest")
EMBED_COLUMNS = ("vector", "parts", "visibility")
# Stored parts are int8 codes (storage.part_codec): within half a step of a unit-norm part, plus float noise.
EMBED_ATOL = 0.5 / CODE_MAX + 1e-5
# Store files are cheap to watch (kill within ~2 ms of a commit); process titles need a scan of /proc.
FILE_POLL_S = 0.002
TITLE_POLL_S = 0.05
# Ray names a worker process after what it runs ("ray::<task>" / "ray::<Actor>.<method>").
DECODE_TITLE = "ray::_decode"
EMBED_TITLE = "ray::EmbedActor.embed"


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[reliability] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- archives

def synth_archive(out: Path, seeds: Sequence[int]) -> Path:
    """A synthetic archive of one small world per seed (3 cameras x 8 s each, so 3 videos per seed), side by side.

    Each world starts an hour after the previous one, so its files get names of their own.
    """
    from training.synthetic import WorldConfig, generate_archive

    for hour, seed in enumerate(seeds):
        config = WorldConfig.small(seed=seed)
        generate_archive(out, dataclasses.replace(config, start_time=config.start_time + 3600 * hour))
    return out


def _tiny_video(path: Path, shade: int, frames: int = 12, size: tuple[int, int] = (96, 64), fourcc: str = "mp4v") -> None:
    """A valid short video of one grey ``shade`` (distinct shades give distinct content hashes)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path} with {fourcc}")
    frame = np.full((size[1], size[0], 3), shade, np.uint8)
    for _ in range(frames):
        writer.write(frame)
    writer.release()


def _sidecar_text(frames: list[dict]) -> str:
    """A kpr-sidecar-v1 document with the given frame entries."""
    return json.dumps({"format": SIDECAR_FORMAT, "camera_id": "bad", "start_time": 1767254400.0, "fps": 10.0,
                       "tracks": {}, "frames": frames})


def _person(bbox: list) -> dict:
    """One sidecar detection with ``bbox`` and a plausible skeleton."""
    return {"track_id": 1, "bbox": bbox, "keypoints": [[10.0 + i, 10.0 + 2 * i, 2] for i in range(17)]}


def add_corrupt_inputs(archive: Path, seed: int = 0) -> dict[str, str]:
    """Add one bad video or bad sidecar of each kind to ``archive/bad/``; returns {file name: what is wrong with it}.

    Every bad file has content of its own (no two share a content hash with each other or a good video).
    """
    import cv2

    folder = archive / "bad"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    good = sorted(p for p in archive.rglob("*.mp4") if p.parent != folder)[0]
    bad: dict[str, str] = {}

    def video(name: str, what: str, content: bytes | None = None, sidecar: str | None = None) -> Path:
        """Write bad input ``name`` (its bytes and sidecar text when given) and note what is wrong with it."""
        path = folder / name
        if content is not None:
            path.write_bytes(content)
        if sidecar is not None:
            path.with_suffix(".json").write_text(sidecar)
        bad[name] = what
        return path

    valid_sidecar = _sidecar_text([{"frame_index": 0, "detections": [_person([4, 4, 30, 50])]}])
    data = good.read_bytes()
    video("truncated.mp4", "MPEG-4 video truncated to half its bytes", data[: len(data) // 2],
          good.with_suffix(".json").read_text())
    clip = video("truncated.avi", "MJPEG AVI of 50 frames cut to half its bytes (the frames before the cut decode)",
                 None, valid_sidecar)
    _tiny_video(clip, 200, frames=50, size=(160, 120), fourcc="MJPG")
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    video("zero_bytes.mp4", "zero-byte video", b"", valid_sidecar)
    _, jpeg = cv2.imencode(".jpg", np.full((64, 48, 3), 128, np.uint8))
    video("photo.mp4", "a JPEG image named .mp4", jpeg.tobytes(), valid_sidecar)
    video("notes.mkv", "a JSON text file named .mkv", valid_sidecar.encode(), valid_sidecar)
    video("random_bytes.mp4", "random bytes", rng.bytes(200_000), valid_sidecar)
    huge = video("huge.avi", "a real MJPEG video of 10000x4000 frames (40 Mpx, above the 8K limit)", None, valid_sidecar)
    _tiny_video(huge, 90, frames=2, size=(10000, 4000), fourcc="MJPG")
    sidecars = {
        "sidecar_missing.mp4": ("video without its sidecar", None),
        "sidecar_truncated.mp4": ("sidecar JSON cut in half", valid_sidecar[: len(valid_sidecar) // 2]),
        "sidecar_wrong_types.mp4": ("sidecar with a string frame_index and a bbox of strings", _sidecar_text(
            [{"frame_index": "zero", "detections": [_person(["a", "b", "c", "d"])]}])),
        "sidecar_huge_numbers.mp4": ("sidecar bbox of 1e39 (beyond float32)", _sidecar_text(
            [{"frame_index": 0, "detections": [_person([0, 0, 1e39, 1e39])]}])),
        "sidecar_deep_nesting.mp4": ("sidecar of 100,000 nested lists", "[" * 100_000 + "]" * 100_000),
        "sidecar_not_json.mp4": ("sidecar of random bytes", rng.bytes(4096).decode("latin-1")),
    }
    for i, (name, (what, sidecar)) in enumerate(sidecars.items()):
        _tiny_video(video(name, what, None, sidecar), shade=30 + 35 * i)  # MPEG-4 encodes near shades alike
    return bad


# ----------------------------------------------------------------------------------------------- processes

def _session_of(pid: int) -> int | None:
    """Session id of process ``pid`` (from /proc), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # after "(comm)": state, ppid, pgrp, session


def _title(pid: int) -> str:
    """The command line (Ray's process title for its workers) of ``pid``, or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Ingest:
    """One `kpr ingest` subprocess leading a session of its own (own Ray temp folder), to watch and kill as a whole."""

    def __init__(self, archive: Path, db: Path, model: Path, log_path: Path, fps: float = 5.0):
        self.command = [str(KPR_CLI), "ingest", str(archive), "--db", str(db), "--model", str(model), "--fps", str(fps),
                        "--no-progress"]
        # Short: Ray's socket paths live under it and must stay below the 107-byte Unix socket limit.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="krl-", dir="/tmp"))
        env = dict(os.environ, RAY_TMPDIR=str(self.ray_tmp), PREFECT_LOGGING_LEVEL="WARNING",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   # Two ingestions and their Ray workers on 2 cores: the default 60 s start of the ephemeral
                   # Prefect server timed out (the run exits 2 with that message before touching the store).
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
        self.log_path = log_path
        self.started = time.perf_counter()
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=ROOT)
        self.leftovers = 0

    def session_pids(self) -> list[int]:
        """Every live process of this ingestion's session (the CLI, Ray's GCS, raylet and workers, Prefect's server)."""
        pids = (int(name) for name in os.listdir("/proc") if name.isdigit())
        return [pid for pid in pids if _session_of(pid) == self.proc.pid]

    def titles(self) -> set[str]:
        """What the session's processes run now (Ray workers show their task, e.g. 'ray::_extract')."""
        return {_title(pid).split(" ")[0] for pid in self.session_pids()}

    def running(self) -> bool:
        """Whether the CLI process is still running."""
        return self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL the whole process group, then any process of the session left (Ray puts workers in groups of their own)."""
        killed_at = time.perf_counter() - self.started
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._reap()
        return killed_at

    def wait(self, timeout: float = 900.0) -> int:
        """Wait for the CLI to exit; returns its exit code (the session's leftover processes are killed and counted)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reap()
        return code

    @property
    def output(self) -> str:
        """Everything the CLI printed (stdout and stderr) so far."""
        return self.log_path.read_text(errors="replace")

    def _reap(self, timeout: float = 30.0) -> None:
        """Kill every process still in the session (by pid) until none is left, and drop the Ray temp folder."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while (pids := self.session_pids()) and time.monotonic() < deadline:
            seen.update(pids)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        if self.session_pids():
            raise RuntimeError(f"processes of session {self.proc.pid} survive SIGKILL: {self.session_pids()}")
        self.leftovers += len(seen)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _count(folder: Path, suffix: str) -> int:
    """Number of files ending in ``suffix`` in ``folder`` (0 while it does not exist)."""
    try:
        return sum(1 for entry in os.scandir(folder) if entry.name.endswith(suffix))
    except FileNotFoundError:
        return 0


def kill_condition(point: str, db: Path, nth: int) -> tuple[Callable[[Ingest], bool], float]:
    """When to kill for ``point`` (and how often to look), judged only from outside: store files and Ray worker titles.

    decode: a decode task runs and nothing is written yet; embed: the embedding actor runs after
    ``nth - 1`` commits of detections; commit_data: the ``nth`` append's data file exists (its commit
    may not); commit_manifest: the ``nth`` append is committed (1 creation + nth append versions) and
    its videos may not be marked done yet.
    """
    data, versions = db / "detections.lance" / "data", db / "detections.lance" / "_versions"
    conditions = {
        "decode": (lambda ingest: _count(data, ".lance") == 0 and DECODE_TITLE in ingest.titles(), TITLE_POLL_S),
        "embed": (lambda ingest: _count(data, ".lance") >= nth - 1 and EMBED_TITLE in ingest.titles(), TITLE_POLL_S),
        "commit_data": (lambda ingest: _count(data, ".lance") >= nth, FILE_POLL_S),
        "commit_manifest": (lambda ingest: _count(versions, ".manifest") >= 1 + nth, FILE_POLL_S),
    }
    return conditions[point]


def kill_when(ingest: Ingest, condition: Callable[[Ingest], bool], poll_s: float, timeout: float = 600.0) -> float | None:
    """Poll ``condition`` and SIGKILL the ingestion the moment it holds; returns the kill time (None: it ended first)."""
    deadline = time.monotonic() + timeout
    while ingest.running() and time.monotonic() < deadline:
        if condition(ingest):
            return ingest.kill()
        time.sleep(poll_s)
    ingest.wait()
    return None


# ----------------------------------------------------------------------------------------------- stores

@dataclass
class Snapshot:
    """What a store (or the reference computation) holds: detection ids (repeats kept), embeddings, video rows and
    tracklets (id, detection count; repeats kept)."""

    ids: list[str] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    videos: list[dict] = field(default_factory=list)
    tracklets: list[tuple[str, int]] = field(default_factory=list)

    def merged(self, other: "Snapshot") -> "Snapshot":
        """The union of two snapshots of disjoint archives."""
        return Snapshot(self.ids + other.ids, {**self.embeddings, **other.embeddings}, self.videos + other.videos,
                        self.tracklets + other.tracklets)


def _flat(embeddings: ReIDEmbeddings) -> np.ndarray:
    """ReIDEmbeddings as one float32 row per detection: global, parts and visibility side by side."""
    parts = [embeddings.global_emb, embeddings.parts, embeddings.visibility]
    return np.concatenate([np.asarray(p, np.float32).reshape(len(embeddings), -1) for p in parts], axis=1)


def store_snapshot(db: Path) -> Snapshot:
    """Every detection id, embedding and video row of the store at ``db``."""
    store = Store.open(str(db), create=False)
    tracklets = store.list_tracklets(columns=["track_id", "n_detections"])
    tracklets = [] if not tracklets.num_rows else zip(tracklets["track_id"].to_pylist(), tracklets["n_detections"].to_pylist())
    snap = Snapshot(videos=store.video_rows(), tracklets=list(tracklets))  # a run killed before its first commit: none
    for batch in store.iter_detections(columns=["detection_id", *EMBED_COLUMNS]):
        ids = batch["detection_id"].to_pylist()
        snap.ids += ids
        snap.embeddings.update(zip(ids, _flat(embeddings_of(batch))))
    return snap


def expected_snapshot(archive: Path, model: Path, fps: float = 5.0) -> Snapshot:
    """What an ingestion must store: the workers' own decode + crop + embed of every readable video, here, without Ray.

    Videos that the workers refuse are listed in ``videos`` with status "failed".
    """
    from workers.discover import discover_videos, list_video_files
    from workers.embed import Embedder
    from workers.errors import WorkerError
    from workers.video_job import extract_video_crops

    embedder = Embedder(str(model))
    snap = Snapshot()
    for task in discover_videos(list_video_files(archive)):
        try:
            embedded = embedder.embed_video(*extract_video_crops(task, fps))
        except WorkerError as exc:
            snap.videos.append({"video_id": task.video_id, "uri": task.uri, "status": "failed", "error": str(exc)})
            continue
        ids = [r.detection_id for r in embedded.records]
        snap.tracklets += [(t.track_id, t.n_detections) for t in embedded.tracklets]
        if ids:
            snap.ids += ids
            snap.embeddings.update(zip(ids, _flat(embedded.embeddings)))
        snap.videos.append({"video_id": task.video_id, "uri": task.uri, "status": "done", "error": None})
    return snap


def compare(expected: Snapshot, got: Snapshot) -> dict:
    """How a store differs from what it must hold: lost, extra and duplicate rows, embedding error, video rows."""
    counts = Counter(got.ids)
    want = set(expected.ids)
    common = sorted(want & set(counts))
    diff = max((float(np.abs(expected.embeddings[i] - got.embeddings[i]).max()) for i in common), default=0.0)
    video_counts = Counter(v["video_id"] for v in got.videos)
    status = {v["video_id"]: v["status"] for v in got.videos}
    return {
        "expected_rows": len(want),
        "rows": len(got.ids),
        "lost_rows": len(want - set(counts)),
        "extra_rows": len(set(counts) - want),
        "duplicate_rows": sum(n - 1 for n in counts.values()),
        "max_embedding_abs_diff": diff,
        "embeddings_equal": diff <= EMBED_ATOL,
        "videos_not_as_expected": sum(status.get(v["video_id"]) != v["status"] for v in expected.videos),
        "duplicate_video_rows": sum(n - 1 for n in video_counts.values()),
        "tracklets_not_as_expected": sum(((Counter(expected.tracklets) - Counter(got.tracklets))
                                          + (Counter(got.tracklets) - Counter(expected.tracklets))).values()),
    }


def exactly_once(report: dict) -> bool:
    """Whether a `compare` report shows the store holding every expected row once, with the expected embeddings."""
    return (report["lost_rows"] == report["extra_rows"] == report["duplicate_rows"] == 0 and report["embeddings_equal"]
            and report["videos_not_as_expected"] == report["duplicate_video_rows"] == report["tracklets_not_as_expected"] == 0)


def store_state(db: Path) -> dict:
    """What a killed ingestion left: done videos, rows (those of videos not marked done), uncommitted data files.

    ``state`` names it: "nothing written", "mid-commit" (an append's data file written, its commit not),
    "rows without done video" (an append committed, its videos not marked done), or "between videos".
    """
    import lancedb

    try:
        store = Store.open(str(db), create=False)
        done = {v["video_id"] for v in store.video_rows(status="done")}
        rows = [video for batch in store.iter_detections(columns=["video_id"]) for video in batch["video_id"].to_pylist()]
        fragments = (0 if store.embedding_shape is None else
                     lancedb.connect(str(db)).open_table("detections").stats()["fragment_stats"]["num_fragments"])
    except StoreError as exc:
        return {"state": "store unreadable", "error": str(exc)}
    uncommitted = _count(db / "detections.lance" / "data", ".lance") - fragments
    orphans = sum(video not in done for video in rows)
    state = ("mid-commit" if uncommitted > 0 else "rows without done video" if orphans
             else "nothing written" if not rows and not done else "between videos")
    return {"state": state, "videos_done": len(done), "rows": len(rows), "rows_of_videos_not_done": orphans,
            "uncommitted_data_files": uncommitted}


# ----------------------------------------------------------------------------------------------- scenarios

def kill_and_resume(archive: Path, model: Path, db: Path, expected: Snapshot, point: str, nth: int, logs: Path,
                    delay_s: float | None = None) -> dict:
    """Ingest ``archive`` into a fresh ``db``, SIGKILL it at ``point`` (or after ``delay_s`` for point "random"), re-run.

    Returns when it was killed, the store's state after the kill, the re-run's exit code and how
    the final store compares with ``expected``.
    """
    shutil.rmtree(db, ignore_errors=True)
    name = f"{point}-{nth}" if delay_s is None else f"random-{delay_s:.1f}s"
    ingest = Ingest(archive, db, model, logs / f"{name}.killed.log")
    if delay_s is None:
        killed_at = kill_when(ingest, *kill_condition(point, db, nth))
    else:
        killed_at = kill_when(ingest, lambda i: time.perf_counter() - i.started >= delay_s, TITLE_POLL_S)
    after_kill = store_state(db) if killed_at is not None else {"state": "ended before the kill point"}
    resume = Ingest(archive, db, model, logs / f"{name}.resume.log")
    code = resume.wait()
    result = {"point": point, "nth_video": nth, "killed_at_s": None if killed_at is None else round(killed_at, 2),
              "after_kill": after_kill, "processes_outside_group_killed": ingest.leftovers,
              "resume_leftover_processes": resume.leftovers, "resume_exit_code": code,
              "resume_wall_s": round(time.perf_counter() - resume.started, 1), **compare(expected, store_snapshot(db))}
    result["exactly_once"] = exactly_once(result) and code == 0
    log(f"kill {name}: killed at {result['killed_at_s']} s, {after_kill['state']}; resume exit {code}; "
        f"lost {result['lost_rows']}, duplicates {result['duplicate_rows']}, embeddings equal {result['embeddings_equal']}")
    return result


def concurrent(archives: Sequence[Path], model: Path, db: Path, expected: Snapshot, logs: Path, name: str) -> dict:
    """Start one ingestion per archive (repeats allowed) into one fresh store at the same moment; compare the result."""
    shutil.rmtree(db, ignore_errors=True)
    started = time.perf_counter()
    ingests = [Ingest(archive, db, model, logs / f"{name}.{i}.log") for i, archive in enumerate(archives)]
    codes = [ingest.wait() for ingest in ingests]
    result = {"case": name, "exit_codes": codes, "wall_s": round(time.perf_counter() - started, 1),
              "leftover_processes": sum(ingest.leftovers for ingest in ingests),
              **compare(expected, store_snapshot(db))}
    result["exactly_once"] = exactly_once(result) and codes == [0] * len(codes)
    if not result["exactly_once"]:
        result["output_tails"] = [ingest.output[-2000:] for ingest in ingests]
    log(f"concurrent {name}: exit {codes}; lost {result['lost_rows']}, duplicates {result['duplicate_rows']}, "
        f"duplicate video rows {result['duplicate_video_rows']}")
    return result


def corrupt_run(archive: Path, bad: dict[str, str], model: Path, db: Path, expected: Snapshot, logs: Path) -> dict:
    """Ingest ``archive``: the good videos of ``expected`` plus the ``bad`` files (see add_corrupt_inputs).

    Every bad file must end as a failed video row with a reason, and the store must hold exactly ``expected``.
    """
    shutil.rmtree(db, ignore_errors=True)
    ingest = Ingest(archive, db, model, logs / "corrupt.log")
    code = ingest.wait()
    store = Store.open(str(db), create=False)
    rows = {Path(v["uri"]).name: v for v in store.video_rows()}
    failed = {name: rows[name]["error"] for name in bad if name in rows and rows[name]["status"] == "failed"
              and rows[name]["error"]}
    good = [Path(v["uri"]).name for v in expected.videos]
    result = {"exit_code": code, "wall_s": round(time.perf_counter() - ingest.started, 1),
              "traceback_in_output": "Traceback" in ingest.output, "corrupt_files": len(bad),
              "corrupt_recorded_failed": len(failed), "good_videos": len(good),
              "good_videos_missing": sum(rows.get(name, {}).get("status") != "done" for name in good),
              "failures": {name: {"what": bad[name], "reason": failed.get(name)} for name in bad},
              **compare(expected, store_snapshot(db))}
    log(f"corrupt: exit {code}; {len(failed)}/{len(bad)} bad files recorded failed; "
        f"{result['good_videos_missing']} good videos missing")
    return result


def race_video(index: int, rows: int) -> tuple[dict, pa.Table]:
    """Video row and detections (fixed random embeddings, D=8, K=2) of synthetic video ``index``."""
    video_id = f"race{index}"
    rng = np.random.default_rng(index)
    metadata = [detection_row(detection_id(video_id, i, 0), video_id, "cam", i, float(i), [0, 0, 10, 20], "race-model")
                for i in range(rows)]
    embeddings = ReIDEmbeddings(rng.random((rows, 8), np.float32), rng.random((rows, 2, 8), np.float32),
                                rng.random((rows, 2), np.float32))
    video = {"video_id": video_id, "uri": f"/race/{video_id}.mp4", "camera_id": "cam", "model_id": "race-model"}
    return video, detections_table(metadata, embeddings)


def _race_writer(db: str, barrier, videos: int, rows: int) -> None:
    """One racer of commit_race: create (or open) the store with the other racer, then commit every video with it."""
    batches = [race_video(index, rows) for index in range(videos)]
    barrier.wait()
    store = Store.open(db)
    barrier.wait()
    for video, table in batches:
        store.write_video(video, table)


def commit_race(db: Path, videos: int = 3, rows: int = 200) -> dict:
    """Two processes create a new store and commit the same new videos through Store.write_video at the same instant.

    The store-level core of two ingestions of one archive into a new store: both create its tables,
    then both commit the same videos (one wins each claim, the other waits and writes it again).
    Returns the racers' exit codes (a crash is 1) and the rows the store ends with.
    """
    shutil.rmtree(db, ignore_errors=True)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    racers = [context.Process(target=_race_writer, args=(str(db), barrier, videos, rows)) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    store = Store.open(str(db), create=False)
    ids = [i for batch in store.iter_detections(columns=["detection_id"]) for i in batch["detection_id"].to_pylist()]
    video_ids = [v["video_id"] for v in store.video_rows()]
    return {"racers": 2, "videos": videos, "rows_per_video": rows, "exit_codes": [r.exitcode for r in racers],
            "expected_rows": videos * rows, "rows": len(ids), "lost_rows": videos * rows - len(set(ids)),
            "duplicate_rows": len(ids) - len(set(ids)), "duplicate_video_rows": len(video_ids) - len(set(video_ids))}


_CREATE_STORE = "import sys; from storage import Store; Store.open(sys.argv[1])"


def creation_kills(workdir: Path, trials: int) -> dict:
    """SIGKILL a process creating a new store the moment its videos table folder appears, ``trials`` times.

    ``torn_tables`` counts kills that left the folder without a committed version; ``usable_after``
    counts stores that then opened, took a write and read it back.
    """
    torn = usable = 0
    for trial in range(trials):
        db = workdir / f"created-{trial}"
        shutil.rmtree(db, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-c", _CREATE_STORE, str(db)], cwd=ROOT, start_new_session=True)
        folder = db / "videos.lance"
        while proc.poll() is None and not folder.exists():
            pass  # the window between the folder and its first commit is about a millisecond: no sleep
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        torn += folder.exists() and _count(folder / "_versions", ".manifest") == 0
        try:
            video, _ = race_video(trial, 1)
            Store.open(str(db)).record_failure(video, "written after the kill")
            usable += Store.open(str(db), create=False).count_videos(status="failed") == 1
        except StoreError as exc:
            log(f"store {db} unusable after a kill at its creation: {exc}")
    log(f"table creation kills: {trials} trials, {torn} torn tables, {usable} usable after")
    return {"trials": trials, "torn_tables": torn, "usable_after": usable}


# ----------------------------------------------------------------------------------------------- campaign

def tiny_checkpoint(path: Path) -> Path:
    """A seeded random tiny KPR checkpoint (the store's content does not depend on the weights being trained)."""
    import torch

    from kpr_model.checkpoint import save_checkpoint
    from kpr_model.config import KPRConfig
    from kpr_model.model import KPR

    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        save_checkpoint(KPR(KPRConfig.tiny()).eval(), KPRConfig.tiny(), path)
    return path


def _kill_plan(repeats: int, random_kills: int, videos: int, rng: random.Random, span_s: float) -> list[tuple]:
    """(point, nth video, delay) of every kill: each point once per repeat at a later video, then kills at random times."""
    nth = {"decode": lambda r: 1, "embed": lambda r: 2 + r, "commit_data": lambda r: 1 + r, "commit_manifest": lambda r: 1 + r}
    plan = [(point, min(nth[point](r), videos), None) for r in range(repeats) for point in KILL_POINTS]
    return plan + [("random", 0, rng.uniform(0.5, 1.0) * span_s) for _ in range(random_kills)]


def _summary(kills: list[dict], concurrency: list[dict], races: list[dict], created: dict, corrupt: dict) -> dict:
    """The headline figures over all scenarios."""
    runs = kills + concurrency + [corrupt]
    return {
        "kill_points": len(kills),
        "kills_landed": sum(k["killed_at_s"] is not None for k in kills),
        "kill_states": dict(Counter(k["after_kill"]["state"] for k in kills)),
        "kills_exactly_once": sum(k["exactly_once"] for k in kills),
        "table_creation_kills": created["trials"],
        "table_creation_kills_torn": created["torn_tables"],
        "table_creation_kills_usable_after": created["usable_after"],
        "concurrent_runs": len(concurrency),
        "concurrent_exactly_once": sum(c["exactly_once"] for c in concurrency),
        "commit_races": len(races),
        "commit_race_writers_crashed": sum(code != 0 for race in races for code in race["exit_codes"]),
        "lost_rows": sum(r["lost_rows"] for r in runs + races),
        "duplicate_rows": sum(r["duplicate_rows"] for r in runs + races),
        "duplicate_video_rows": sum(r["duplicate_video_rows"] for r in runs + races),
        "embedding_mismatches": sum(not r["embeddings_equal"] for r in runs),
        "tracklets_not_as_expected": sum(r["tracklets_not_as_expected"] for r in runs),
        "corrupt_files": corrupt["corrupt_files"],
        "corrupt_recorded_failed": corrupt["corrupt_recorded_failed"],
        "good_videos_missing": corrupt["good_videos_missing"],
    }


def run(args: argparse.Namespace) -> dict:
    """The whole campaign in ``args.workdir``; returns the result document."""
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)
    model = tiny_checkpoint(work / "model")
    archive_a = synth_archive(work / "archive_a", args.seeds_a)
    archive_b = synth_archive(work / "archive_b", args.seeds_b)
    expected_a, expected_b = expected_snapshot(archive_a, model), expected_snapshot(archive_b, model)
    log(f"archive A: {len(expected_a.videos)} videos, {len(expected_a.ids)} detections; "
        f"archive B: {len(expected_b.videos)} videos, {len(expected_b.ids)} detections")

    reference = Ingest(archive_a, work / "db_reference", model, logs / "reference.log")
    reference_code = reference.wait()
    reference_wall = time.perf_counter() - reference.started
    reference_report = {"exit_code": reference_code, "wall_s": round(reference_wall, 1),
                        **compare(expected_a, store_snapshot(work / "db_reference"))}
    log(f"uninterrupted reference run: {reference_wall:.0f} s, exactly once: {exactly_once(reference_report)}")

    plan = _kill_plan(args.repeats, args.random_kills, len(expected_a.videos), random.Random(args.seed), reference_wall)
    kills = [kill_and_resume(archive_a, model, work / "db_kill", expected_a, point, nth, logs, delay)
             for point, nth, delay in plan]
    created = creation_kills(work, args.creation_kills)
    races = [commit_race(work / "db_race") for _ in range(args.commit_races)]
    log(f"commit races: {[r['duplicate_rows'] for r in races]} duplicate rows")
    concurrency = []
    for repeat in range(args.concurrent_repeats):
        concurrency.append(concurrent([archive_a, archive_b], model, work / "db_concurrent", expected_a.merged(expected_b),
                                      logs, f"disjoint-{repeat}"))
        concurrency.append(concurrent([archive_a, archive_a], model, work / "db_concurrent", expected_a, logs, f"same-{repeat}"))

    archive_c = work / "archive_corrupt"
    shutil.copytree(archive_a, archive_c)
    bad = add_corrupt_inputs(archive_c, args.seed)
    corrupt = corrupt_run(archive_c, bad, model, work / "db_corrupt", expected_a, logs)
    return {
        **_summary(kills, concurrency, races, created, corrupt),
        "command": command_line("bench.reliability"),
        "ingest_command": shlex.join(["kpr", "ingest", "ARCHIVE", "--db", "DB", "--model", "CKPT", "--fps", "5.0",
                                      "--no-progress"]),
        "archive_a": {"seeds": args.seeds_a, "videos": len(expected_a.videos), "detections": len(expected_a.ids)},
        "archive_b": {"seeds": args.seeds_b, "videos": len(expected_b.videos), "detections": len(expected_b.ids)},
        "reference_run": reference_report,
        "kills": kills,
        "table_creation_kills": created,
        "concurrent": concurrency,
        "commit_races": races,
        "corrupt": corrupt,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_end": os.getloadavg()},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_s": round(time.perf_counter() - STARTED, 1),
    }


STARTED = time.perf_counter()


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "kpr_reliability"),
                        help="scratch folder (emptied first) for archives, stores and logs")
    parser.add_argument("--seeds-a", type=int, nargs="+", default=[3, 4], help="worlds of archive A (3 videos each)")
    parser.add_argument("--seeds-b", type=int, nargs="+", default=[5], help="worlds of archive B (disjoint from A)")
    parser.add_argument("--repeats", type=int, default=2, help="kills per kill point (each at another video)")
    parser.add_argument("--random-kills", type=int, default=4, help="extra kills at random times, classified afterwards")
    parser.add_argument("--concurrent-repeats", type=int, default=2, help="repeats of each concurrent case")
    parser.add_argument("--commit-races", type=int, default=10, help="store-level races of two writers on the same videos")
    parser.add_argument("--creation-kills", type=int, default=10, help="kills of a process creating a new store")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill times and bad bytes")
    parser.add_argument("--output", default=RESULTS / "reliability.json", help="result JSON ('-': print only)")
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    write_result(args.output, result, echo=False)
    print(json.dumps({k: result[k] for k in ("kill_points", "lost_rows", "duplicate_rows", "corrupt_files",
                                             "corrupt_recorded_failed", "good_videos_missing")}))
    ok = (result["lost_rows"] == result["duplicate_rows"] == result["good_videos_missing"] == 0
          and result["corrupt_recorded_failed"] == result["corrupt_files"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
