"""Tracking quality: does each tracklet hold one person, on synthetic and on real video?

Every video goes through what `kpr ingest` runs on it (detection backend, crops, KPR embeddings of
``--model``, the per-video tracker with its default settings), in this process and without a store:

- synthetic: a `kpr synth` world (``--seed``, ``--identities``, ``--cameras``, ``--duration``) read
  with the annotations backend, whose ground-truth track ids are hidden from the tracker (blanked
  before tracking); motmetrics compares the tracker's ids with them on the same boxes (IoU >= 0.5)
  over every camera's video: ``synthetic_idf1``, ``synthetic_id_switches``, ``synthetic_mota``.
- MEVA (video/meva_school_G330_annotated.mp4 of ``--shared``, a crowded gym, with YOLOX + MoveNet):
  ``meva_tracklets`` and ``meva_impossible_jumps``, the tracklets with at least one impossible step.
  A step between consecutive detections of a tracklet, ``dt`` seconds apart, is impossible when the
  box centre moves more than ``h * (2 + 3 * max(dt - 0.2, 0))`` pixels, ``h`` the taller of the two
  boxes: more than two body heights between samples 0.2 s apart (the sampling of 5 fps), or faster
  than a sprint (about 3 body heights per second, 5 m/s for 1.7 m) over a longer gap. With
  ``--montages DIR``, one PNG strip per tracklet (its crops over time, a red bar before each
  impossible step) and sheets of them, to look at.
- Intel (video/one-by-one-person-detection.mp4, six people one after another, YOLOX + MoveNet):
  ``intel_people_in_one_tracklet`` (of 6) and ``intel_tracklets_shared`` (tracklets holding two of
  them), from the 18 hand-checked boxes as bench.real_video matches them.

``--before FILE`` keeps the figures of an earlier run (e.g. of the tracker before a change) under
``before``. Writes bench/results/tracking.json (``--output``). From the repository root:
``.venv/bin/python -m bench.tracking --model CHECKPOINT``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from bench.real_video import CROPS, DETECTOR, POSE, VIDEO as INTEL_VIDEO, ground_truth, identity_counts, match_truth
from bench.results_io import RESULTS, command_line, write_result
from bench.shared_data import add_shared_option

MEVA_VIDEO = "video/meva_school_G330_annotated.mp4"
STEP_HEIGHTS = 2.0        # body heights a centre may move between samples SAMPLE_GAP_S apart
SAMPLE_GAP_S = 0.2
SPRINT_HEIGHTS_PER_S = 3.0
STRIP_CROPS = 16          # crops per montage strip, evenly spread over the tracklet
STRIP_HEIGHT = 96
SHEET_ROWS = 8
LABEL_WIDTH = 330         # pixels: room for a row's label above a short strip


def _task(path: Path):
    """The VideoTask of one video file, named by its content hash as ingestion names it."""
    from workers.discover import VideoTask, content_hash

    return VideoTask(content_hash(path), str(path.resolve()), path.parent.name)


def run_video(path: Path, model: str, fps: float, backend, hide_track_ids: bool = False):
    """The records of one video, tracked as ingestion tracks them, and the ground-truth ids they had (when hidden)."""
    from workers.embed import Embedder
    from workers.video_job import extract_video_crops

    facts, crops = extract_video_crops(_task(path), fps, backend)
    truth = [record.track_id for record in crops.records]
    if hide_track_ids:
        for record in crops.records:
            record.track_id = ""
    return Embedder(model).embed_video(facts, crops).records, truth


def _centre(box) -> np.ndarray:
    return np.array([box[0] + box[2] / 2, box[1] + box[3] / 2], np.float64)


def impossible_steps(records: list) -> list[int]:
    """Positions i in ``records`` (one tracklet, in time order) where the step from i - 1 to i is impossible."""
    steps = []
    for i in range(1, len(records)):
        a, b = records[i - 1], records[i]
        height = max(float(a.bbox[3]), float(b.bbox[3]))
        allowed = height * (STEP_HEIGHTS + SPRINT_HEIGHTS_PER_S * max(b.timestamp - a.timestamp - SAMPLE_GAP_S, 0.0))
        if np.linalg.norm(_centre(b.bbox) - _centre(a.bbox)) > allowed:
            steps.append(i)
    return steps


def by_tracklet(records: list) -> dict[str, list]:
    """Each tracklet's records in time order (records without a tracklet left out)."""
    tracks: dict[str, list] = {}
    for record in sorted(records, key=lambda r: (r.timestamp, r.detection_id)):
        if record.track_id:
            tracks.setdefault(record.track_id, []).append(record)
    return tracks


def synthetic_scores(model: str, fps: float, seed: int, identities: int, cameras: int, duration: float) -> dict:
    """IDF1, ID switches and MOTA of the tracker against the hidden ground truth of a synthetic world's videos."""
    import motmetrics

    from training.synthetic import WorldConfig, generate_archive
    from workers.backends import BackendConfig
    from workers.track import box_iou

    with tempfile.TemporaryDirectory() as tmp:
        videos = generate_archive(tmp, WorldConfig(seed=seed, n_identities=identities, n_cameras=cameras,
                                                   duration_s=duration))
        accumulators, names = [], []
        for video in videos:
            records, truth = run_video(video, model, fps, BackendConfig(), hide_track_ids=True)
            accumulators.append(_accumulate(motmetrics, records, truth, box_iou))
            names.append(video.parent.name)
    metrics = motmetrics.metrics.create().compute_many(accumulators, names=names, generate_overall=True,
                                                       metrics=["idf1", "num_switches", "mota", "num_unique_objects"])
    overall = metrics.loc["OVERALL"]
    return {"synthetic_idf1": round(float(overall["idf1"]), 4), "synthetic_id_switches": int(overall["num_switches"]),
            "synthetic_mota": round(float(overall["mota"]), 4),
            "synthetic_people_tracks": int(overall["num_unique_objects"])}


def _accumulate(motmetrics, records: list, truth: list[str], box_iou):
    """A motmetrics accumulator of one video: per frame, ground-truth ids vs tracker ids, IoU >= 0.5 matches."""
    accumulator = motmetrics.MOTAccumulator(auto_id=False)
    number: dict[str, int] = {}  # motmetrics wants numbers for ids

    def index(name: str) -> int:
        return number.setdefault(name, len(number))

    frames: dict[int, list[int]] = {}
    for i, record in enumerate(records):
        frames.setdefault(record.frame_index, []).append(i)
    for frame, rows in sorted(frames.items()):
        boxes = np.stack([np.asarray(records[i].bbox, np.float64) for i in rows])
        distance = 1.0 - box_iou(boxes, boxes)
        distance[distance > 0.5] = np.nan
        accumulator.update([index("gt:" + truth[i]) for i in rows],
                           [index("hyp:" + (records[i].track_id or records[i].detection_id)) for i in rows],
                           distance, frameid=frame)
    return accumulator


def meva_scores(model: str, fps: float, shared: Path, montages: Path | None) -> dict:
    """Tracklets of the crowded MEVA video and how many make an impossible jump; montages when asked."""
    from workers.backends import BackendConfig

    backend = BackendConfig("yolox", str(shared / DETECTOR), str(shared / POSE))
    records, _ = run_video(shared / MEVA_VIDEO, model, fps, backend)
    tracks = by_tracklet(records)
    jumps = {track_id: impossible_steps(members) for track_id, members in tracks.items()}
    if montages is not None:
        write_montages(montages, tracks, jumps)
    return {"meva_detections": len(records), "meva_tracklets": len(tracks),
            "meva_tracklets_with_5_or_more": sum(len(m) >= 5 for m in tracks.values()),
            "meva_impossible_jumps": sum(bool(steps) for steps in jumps.values()),
            "meva_box_height_median": round(float(np.median([r.bbox[3] for r in records])), 1) if records else 0.0}


def intel_scores(model: str, fps: float, shared: Path) -> dict:
    """Whether each of the six people of the Intel video is one tracklet of their own."""
    from workers.backends import BackendConfig

    backend = BackendConfig("yolox", str(shared / DETECTOR), str(shared / POSE))
    records, _ = run_video(shared / INTEL_VIDEO, model, fps, backend)
    rows = [{"detection_id": r.detection_id, "frame_index": r.frame_index, "bbox": r.bbox, "track_id": r.track_id}
            for r in records]
    people, shared_tracklets = identity_counts(match_truth(rows, ground_truth(shared)))
    return {"intel_detections": len(records), "intel_tracklets": len(by_tracklet(records)),
            "intel_people_in_one_tracklet": people, "intel_tracklets_shared": shared_tracklets}


def _strip(members: list, steps: list[int]) -> np.ndarray:
    """One tracklet's crops over time as one RGB row (a red bar before a crop reached by an impossible step)."""
    picks = sorted(set(np.linspace(0, len(members) - 1, min(STRIP_CROPS, len(members))).round().astype(int)) | set(steps))
    tiles = []
    for i in picks:
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(members[i].thumbnail, np.uint8), cv2.IMREAD_COLOR),
                             cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (max(1, round(image.shape[1] * STRIP_HEIGHT / image.shape[0])), STRIP_HEIGHT))
        bar = np.zeros((STRIP_HEIGHT, 4, 3), np.uint8)
        bar[..., 0] = 255 if i in steps else 0
        tiles += [bar, image]
    return np.concatenate(tiles, axis=1)


def write_montages(folder: Path, tracks: dict[str, list], jumps: dict[str, list[int]]) -> None:
    """One PNG strip per tracklet and sheets of SHEET_ROWS strips, each row labelled with its id and size."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for track_id, members in tracks.items():
        strip = _strip(members, jumps[track_id])
        cv2.imwrite(str(folder / f"{track_id}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        text = f"{track_id}  n={len(members)}  impossible steps={len(jumps[track_id])}"
        width = max(strip.shape[1], LABEL_WIDTH)
        label = np.full((18, width, 3), 255, np.uint8)
        cv2.putText(label, text, (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        rows.append(np.concatenate([label, np.pad(strip, ((0, 0), (0, width - strip.shape[1]), (0, 0)),
                                                  constant_values=255)]))
    for sheet, start in enumerate(range(0, len(rows), SHEET_ROWS)):
        chunk = rows[start:start + SHEET_ROWS]
        width = max(row.shape[1] for row in chunk)
        padded = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in chunk]
        cv2.imwrite(str(folder / f"sheet_{sheet:02d}.png"), cv2.cvtColor(np.concatenate(padded), cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="KPR checkpoint folder or ONNX file the crops are embedded with")
    add_shared_option(parser, "video/, reid/, models/")
    parser.add_argument("--fps", type=float, default=5.0, help="frames sampled per second (as kpr ingest --fps)")
    parser.add_argument("--seed", type=int, default=3, help="synthetic world seed")
    parser.add_argument("--identities", type=int, default=16, help="synthetic world identities")
    parser.add_argument("--cameras", type=int, default=2, help="synthetic world cameras")
    parser.add_argument("--duration", type=float, default=30.0, help="synthetic seconds of video per camera")
    parser.add_argument("--montages", type=Path, help="write a PNG strip per MEVA tracklet and sheets of them here")
    parser.add_argument("--before", type=Path, help="result file of an earlier run, kept under 'before'")
    parser.add_argument("--output", default=RESULTS / "tracking.json", help="result JSON ('-': print only)")
    args = parser.parse_args(argv)
    for name in (MEVA_VIDEO, INTEL_VIDEO, CROPS, DETECTOR, POSE):
        if not (args.shared / name).is_file():
            parser.error(f"{args.shared / name} not found (see --shared)")
    result = {"model": args.model, "fps": args.fps,
              **synthetic_scores(args.model, args.fps, args.seed, args.identities, args.cameras, args.duration),
              **meva_scores(args.model, args.fps, args.shared, args.montages),
              **intel_scores(args.model, args.fps, args.shared),
              "command": command_line("bench.tracking", argv)}
    if args.before:
        earlier = json.loads(args.before.read_text())
        result["before"] = {key: value for key, value in earlier.items() if key not in ("before", "command")}
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
