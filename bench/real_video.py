"""Real video, real detector and pose model, KPR: are the six people of the Intel sample video found and told apart?

Ingests video/one-by-one-person-detection.mp4 of the shared data folder (``--shared``) with
`kpr ingest --backend yolox` (YOLOX-Nano ONNX boxes + MoveNet Lightning keypoints) and a KPR
checkpoint, then scores the store against the 18 hand-checked boxes of the folder's
reid/one_by_one_crops/crops.csv (6 people x 3 frames):

- ``gt_boxes_matched``: ground-truth boxes with a stored detection of IoU >= 0.5 in their frame;
- ``people_in_one_tracklet``: people whose matched detections all lie in one tracklet, and
  ``tracklets_shared_by_people``: tracklets holding matched detections of two people (should be 0);
- retrieval: each matched detection queries the store (`PersonSearch.by_detection`, same camera
  allowed, itself excluded); a hit is correct when its frame lies in the same person's time span
  (their ground-truth frames +- ``SPAN_MARGIN`` frames; the spans are disjoint, the people come one
  after another). ``rank1`` and ``precision_at_10`` average over the queries; ``map`` ranks every
  other detection of the store for each query and averages the precision at each of the person's
  detections, detections outside every span being left out of the ranking (as junk is in Market-1501).

Writes bench/results/real_video.json (``--output``) with the command that produced it. From the
repository root: ``.venv/bin/python -m bench.real_video --model CHECKPOINT``.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.results_io import RESULTS, command_line, write_result
from bench.shared_data import add_shared_option

VIDEO = "video/one-by-one-person-detection.mp4"
CROPS = "reid/one_by_one_crops/crops.csv"
DETECTOR = "models/yolox_nano_416x416.onnx"
POSE = "models/movenet_singlepose_lightning_int8.tflite"
SPAN_MARGIN = 50
TOP_K = 10


def ground_truth(shared: Path) -> list[dict]:
    """The 18 ground-truth boxes: person, frame index and box (x, y, w, h)."""
    with open(shared / CROPS, newline="") as handle:
        return [{"person": int(r["person_id"]), "frame": int(r["frame_index"]),
                 "box": np.array([float(r[k]) for k in "xywh"])} for r in csv.DictReader(handle)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def person_spans(truth: list[dict]) -> dict[int, tuple[int, int]]:
    """Each person's frame span: their ground-truth frames widened by SPAN_MARGIN."""
    spans: dict[int, tuple[int, int]] = {}
    for row in truth:
        lo, hi = spans.get(row["person"], (row["frame"], row["frame"]))
        spans[row["person"]] = (min(lo, row["frame"]), max(hi, row["frame"]))
    return {p: (lo - SPAN_MARGIN, hi + SPAN_MARGIN) for p, (lo, hi) in spans.items()}


def ingest(video: Path, db: Path, model: str, shared: Path, fps: float, extra: list[str]) -> float:
    """`kpr ingest` of the one video with the yolox + movenet backends; wall seconds."""
    from pipelines.cli import main

    archive = db.parent / "archive" / "intel-table-cam"
    archive.mkdir(parents=True)
    (archive / video.name).symlink_to(video.resolve())
    started = time.perf_counter()
    code = main(["ingest", str(archive.parent), "--db", str(db), "--model", model, "--fps", str(fps),
                 "--backend", "yolox", "--detector-model", str(shared / DETECTOR), "--pose-model", str(shared / POSE),
                 "--no-progress", *extra])
    if code != 0:
        raise SystemExit(f"kpr ingest failed with exit code {code}")
    return time.perf_counter() - started


def match_truth(rows: list[dict], truth: list[dict]) -> list[dict]:
    """The ground-truth boxes that a detection row (detection_id, frame_index, bbox, track_id) matches with
    IoU >= 0.5 in their frame, each with that detection's id and track id."""
    by_frame: dict[int, list[dict]] = {}
    for row in rows:
        by_frame.setdefault(row["frame_index"], []).append(row)
    matched = []
    for gt in truth:
        best = max(by_frame.get(gt["frame"], []), key=lambda r: iou(np.array(r["bbox"]), gt["box"]), default=None)
        if best is not None and iou(np.array(best["bbox"]), gt["box"]) >= 0.5:
            matched.append({**gt, "detection_id": best["detection_id"], "track_id": best["track_id"]})
    return matched


def identity_counts(matched: list[dict]) -> tuple[int, int]:
    """(people whose three matched boxes all lie in one tracklet, tracklets holding matched boxes of two people)."""
    tracks_of: dict[int, set[str]] = {}
    people_of_track: dict[str, set[int]] = {}
    for m in matched:
        tracks_of.setdefault(m["person"], set()).add(m["track_id"])
        people_of_track.setdefault(m["track_id"], set()).add(m["person"])
    in_one = sum(len(t) == 1 and sum(m["person"] == p for m in matched) == 3 for p, t in tracks_of.items())
    return in_one, sum(len(p) > 1 for p in people_of_track.values())


def score(db: Path, truth: list[dict]) -> dict:
    """The figures of the module docstring, from the ingested store."""
    from storage import PersonSearch, Store

    store = Store.open(str(db), create=False)
    rows = store.query_detections(None, ["detection_id", "frame_index", "bbox", "track_id"]).to_pylist()
    matched = match_truth(rows, truth)
    spans = person_spans(truth)

    def person_at(frame: int) -> int | None:
        return next((p for p, (lo, hi) in spans.items() if lo <= frame <= hi), None)

    people_in_one_tracklet, tracklets_shared = identity_counts(matched)
    search = PersonSearch(store)
    rank1, precision, average_precision = [], [], []
    for m in matched:
        hits = search.by_detection(m["detection_id"], k=len(rows), other_cameras_only=False, candidates=len(rows))
        people = [person_at(h.frame_index) for h in hits]
        correct = [p == m["person"] for p in people]
        rank1.append(float(bool(correct) and correct[0]))
        precision.append(sum(correct[:TOP_K]) / TOP_K)
        ranked = np.array([c for c, p in zip(correct, people) if p is not None], dtype=float)
        average_precision.append(float((np.cumsum(ranked) / np.arange(1, len(ranked) + 1))[ranked > 0].mean()))
    tracklets = store.list_tracklets().to_pylist()
    return {
        "detections": len(rows),
        "tracklets": len(tracklets),
        "tracklets_with_5_or_more": sum(t["n_detections"] >= 5 for t in tracklets),
        "gt_boxes": len(truth),
        "gt_boxes_matched": len(matched),
        "people": len(spans),
        "people_in_one_tracklet": people_in_one_tracklet,
        "tracklets_shared_by_people": tracklets_shared,
        "queries": len(matched),
        "rank1": round(float(np.mean(rank1)), 3) if rank1 else 0.0,
        "precision_at_10": round(float(np.mean(precision)), 3) if precision else 0.0,
        "map": round(float(np.mean(average_precision)), 3) if average_precision else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="KPR checkpoint folder (e.g. the one bench.synthetic_benchmark trains)")
    add_shared_option(parser, "video/, reid/, models/")
    parser.add_argument("--fps", type=float, default=5.0, help="frames sampled per second (the video has 10)")
    parser.add_argument("--output", default=RESULTS / "real_video.json", help="result JSON ('-': print only)")
    parser.add_argument("ingest_args", nargs=argparse.REMAINDER, help="more `kpr ingest` options after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.ingest_args if a != "--"]
    truth = ground_truth(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "store"
        wall_s = ingest(args.shared / VIDEO, db, args.model, args.shared, args.fps, extra)
        result = {"video": VIDEO, "backend": "yolox + movenet", "model": args.model, "fps": args.fps,
                  **score(db, truth), "ingest_wall_s": round(wall_s, 1),
                  "command": command_line("bench.real_video", argv)}
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
