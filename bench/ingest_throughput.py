"""Ingestion throughput: each stage alone and the whole Ray pipeline end to end, on the same real video.

Input: the Intel sample video of the shared data folder (``--shared``:
video/one-by-one-person-detection.mp4, 768x432, 10 fps, 139 s) sampled at ``--fps``, the yolox
backend (YOLOX-Nano ONNX + MoveNet Lightning) and a random-weight KPR of ``--preset`` (timing does
not depend on the weights). Every measurement runs in a fresh process
pinned to its CPU cores (``os.sched_setaffinity``, inherited by Ray's worker processes); every
model computes with one thread, as each actor does when the actors share 2 cores:

- stages alone, one after the other over the same frames, on one core: ``decode`` (decord, frame
  batches), ``detect_pose`` (YOLOX boxes + MoveNet keypoints + crops and thumbnails: a detect
  actor's work), ``embed`` (KPR on the crops with their prompts: an embed actor's work) and
  ``track``; each as frames/s (and crops/s where it applies);
- end to end: `workers.ray_stages.run_videos` (decode tasks per segment, detect and embed actor
  pools, backpressure, tracking) over ``--copies`` copies of the video on a local Ray: with one
  actor per stage on 2 cores (``end_to_end_fps``: the stages overlap, so the slowest one bounds it),
  and as ``workers_1`` (1 core, 1 detect + 1 embed actor) vs ``workers_2`` (2 cores, 2 + 2 actors).
  Steady state: the frames of copies 2..n over the time from the first copy's end to the last's,
  so Ray start-up, model loading and pipeline fill are left out.

``efficiency`` = end to end / slowest stage alone; ``scaling`` = workers_2 / workers_1;
``one_core_bound_fps`` = 1 / (sum of the stages' seconds per frame): the best 1 core can do.
Writes bench/results/ingest_throughput.json with the command that produced it. From the repository
root: ``.venv/bin/python -m bench.ingest_throughput``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

from bench.results_io import RESULTS, command_line, write_result
from bench.shared_data import add_shared_option

VIDEO = "video/one-by-one-person-detection.mp4"
DETECTOR = "models/yolox_nano_416x416.onnx"
POSE = "models/movenet_singlepose_lightning_int8.tflite"


def _pin(cpus: int) -> None:
    """Run this process (and every process it starts) on the first ``cpus`` cores only."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cpus]))


def _backend(shared: Path):
    from workers.backends import BackendConfig

    return BackendConfig("yolox", detector_model=str(shared / DETECTOR), pose_model=str(shared / POSE))


def _task(video: Path, copy: int = 0):
    from workers.discover import VideoTask, content_hash

    return VideoTask(f"{content_hash(video)[:24]}{copy:08d}", str(video.resolve()), "intel-table-cam")


def measure_stages(video: Path, shared: Path, model: str, fps: float, threads: int) -> dict:
    """Each stage alone over the same frames, in this process, with ``threads`` threads (one core per thread)."""
    _pin(threads)
    import torch

    from workers.decode import iter_frame_batches
    from workers.embed import Embedder, assemble_video
    from workers.video_job import FrameDetector, plan_video

    torch.set_num_threads(threads)
    task, backend = _task(video), _backend(shared)
    detector, embedder = FrameDetector(backend, threads=threads), Embedder(model)
    started = time.perf_counter()
    batches = list(iter_frame_batches(video, fps))
    decode_s = time.perf_counter() - started
    frames = sum(len(b) for b in batches)
    facts, _ = plan_video(task, backend, float("inf"))
    started = time.perf_counter()
    detected = [detector.detect(task, facts.start_time, b) for b in batches]
    detect_s = time.perf_counter() - started
    crops = sum(len(d.records) for d in detected)
    started = time.perf_counter()
    embedded = [embedder.embed_batch(d) for d in detected]
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    assemble_video(facts, embedded)
    track_s = time.perf_counter() - started
    seconds = {"decode": decode_s, "detect_pose": detect_s, "embed": embed_s, "track": track_s}
    return {"frames": frames, "crops": crops,
            "stages": {name: {"seconds": round(s, 2), "frames_per_s": round(frames / s, 1),
                              **({"crops_per_s": round(crops / s, 1)} if name in ("detect_pose", "embed") else {})}
                       for name, s in seconds.items()},
            "one_core_bound_fps": round(frames / sum(seconds.values()), 1)}


def measure_pipeline(video: Path, shared: Path, model: str, fps: float, cpus: int, actors: int, copies: int,
                     segment_s: float) -> dict:
    """`run_videos` on a local Ray of ``cpus`` cores, with ``actors`` detect and as many embed actors, over
    ``copies`` copies of the video; steady-state frames/s."""
    _pin(cpus)
    from workers.ingest_options import IngestOptions
    from workers.ray_stages import StageStats, ensure_ray, run_videos

    ensure_ray(num_cpus=cpus)
    options = IngestOptions(target_fps=fps, segment_s=segment_s, backend=_backend(shared), detectors=actors,
                            embedders=actors)
    stats = StageStats()
    started = time.perf_counter()
    finished: list[tuple[float, int]] = []
    for outcome in run_videos([_task(video, c) for c in range(copies)], model, options, stats):
        if outcome.error:
            raise RuntimeError(outcome.error)
        finished.append((time.perf_counter(), outcome.result.frames_sampled))
    steady_frames = sum(frames for _, frames in finished[1:])
    steady_s = finished[-1][0] - finished[0][0]
    return {"cpus": cpus, "detectors": actors, "embedders": actors, "copies": copies, "segment_s": segment_s, "wall_s": round(time.perf_counter() - started, 1),
            "frames": stats.frames, "crops": stats.crops, "peak_batches_alive": stats.peak_batches_alive,
            "steady_frames_per_s": round(steady_frames / steady_s, 1),
            "steady_crops_per_s": round(stats.crops * steady_frames / stats.frames / steady_s, 1)}


def _in_child(function, *args) -> dict:
    """Run ``function`` in a fresh process (its own CPU pinning, its own Ray) and return its result."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def _random_checkpoint(folder: Path, preset: str) -> str:
    import torch

    from kpr_model.checkpoint import save_checkpoint
    from kpr_model.config import KPRConfig
    from kpr_model.model import KPR

    torch.manual_seed(0)
    config = getattr(KPRConfig, preset)()
    save_checkpoint(KPR(config).eval(), config, folder)
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_option(parser, "video/, models/")
    parser.add_argument("--fps", type=float, default=5.0, help="frames sampled per second of video")
    parser.add_argument("--preset", default="demo", help="KPRConfig preset of the random-weight KPR")
    parser.add_argument("--model", help="a KPR checkpoint folder instead of a random one")
    parser.add_argument("--copies", type=int, default=3, help="copies of the video in the end-to-end runs")
    parser.add_argument("--segment-s", type=float, default=30.0)
    parser.add_argument("--output", default=RESULTS / "ingest_throughput.json", help="result JSON ('-': print only)")
    args = parser.parse_args()
    video = args.shared / VIDEO
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _random_checkpoint(Path(tmp) / "kpr", args.preset)
        stages = _in_child(measure_stages, video, args.shared, model, args.fps, 1)
        staged = _in_child(measure_pipeline, video, args.shared, model, args.fps, 2, 1, args.copies, args.segment_s)
        one = _in_child(measure_pipeline, video, args.shared, model, args.fps, 1, 1, args.copies, args.segment_s)
        two = _in_child(measure_pipeline, video, args.shared, model, args.fps, 2, 2, args.copies, args.segment_s)
    slowest_name, slowest = min(stages["stages"].items(), key=lambda kv: kv[1]["frames_per_s"])
    result = {
        "device": f"cpu ({platform.machine()}, 2 cores)",
        "video": VIDEO, "fps": args.fps, "backend": "yolox + movenet",
        "kpr": args.model or f"random-weight {args.preset} preset",
        "slowest_stage": slowest_name,
        "slowest_stage_fps": slowest["frames_per_s"],
        "end_to_end_fps": staged["steady_frames_per_s"],
        "efficiency": round(staged["steady_frames_per_s"] / slowest["frames_per_s"], 3),
        "workers_1_fps": one["steady_frames_per_s"],
        "workers_2_fps": two["steady_frames_per_s"],
        "scaling": round(two["steady_frames_per_s"] / one["steady_frames_per_s"], 3),
        "stages_alone": stages,
        "pipeline": {"one_actor_per_stage_2_cores": staged, "workers_1": one, "workers_2": two},
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command_line("bench.ingest_throughput"),
    }
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
