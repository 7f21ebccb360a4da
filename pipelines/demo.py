"""`kpr demo`: the whole product on one machine, scored against synthetic ground truth.

Renders a training world and an archive world with disjoint identities, trains a small KPR on
the first, ingests the second with the real ingestion flow (Prefect + Ray + LanceDB), queries
every tracklet of every identity across cameras and reports top-1 and mAP.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.errors import UserError
from pipelines.flows import ingest_archive
from pipelines.ingest_inputs import IngestInputs
from pipelines.html_report import people_section, write_results_html
from storage import PersonSearch, Store
from training.archive_truth import archive_truth
from training.evaluation import chance_metrics, metrics_from_matches
from training.synthetic import WorldConfig, export_reid_crops, generate_archive
from training.train import train
from training.train_config import TrainConfig
from workers.discover import content_hash
from workers.ingest_options import IngestOptions
from workers.records import detection_id

MARKER = ".kpr-demo"
OWNED = ("train_crops", "model", "archive", "store", "demo_report.json", "demo_report.html")


@dataclass
class DemoConfig:
    """Sizes of the demo's worlds and training; ``quick`` shrinks everything for smoke tests.

    Training runs a fixed number of epochs (so figures repeat across machines) with a time cap
    that keeps the demo within its 15-minute promise on a slow or busy machine.
    """

    out: Path
    train_epochs: int = 85
    train_minutes: float = 8.0
    quick: bool = False
    archive_seed: int = 7
    train_seed: int = 1001
    identities: int = 16
    train_identities: int = 60
    train_fraction: float = 0.8
    cameras: int = 4
    duration_s: float = 40.0
    fps: float = 5.0

    def archive_world(self) -> WorldConfig:
        if self.quick:
            return WorldConfig.small(seed=self.archive_seed)
        return WorldConfig(seed=self.archive_seed, n_identities=self.identities, n_cameras=self.cameras, duration_s=self.duration_s)

    def train_world(self) -> WorldConfig:
        if self.quick:
            return WorldConfig.small(seed=self.train_seed)
        return WorldConfig(seed=self.train_seed, n_identities=self.train_identities, n_cameras=self.cameras,
                           duration_s=90.0)


def _prepare_out(out: Path) -> None:
    """Use ``out`` only if it is new, empty or an earlier demo's folder; clear what an earlier demo left."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UserError(f"{out} exists and was not made by `kpr demo`; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by kpr demo; its contents are replaced by the next demo run\n")
    for name in OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _step(n: int, text: str) -> float:
    print(f"[demo {n}/5] {text}", file=sys.stderr, flush=True)
    return time.perf_counter()


def _queries(store: Store, truth: dict) -> dict[str, tuple]:
    """One query per tracklet: its middle target detection. Returns {detection_id: truth record}."""
    by_track = defaultdict(list)
    for det_id in store.query_detections(None, columns=["detection_id"])["detection_id"].to_pylist():
        key = _truth_key(det_id)
        record = truth.get(key)
        if record is not None and record.target:
            by_track[record.track].append((record.frame_index, det_id, record))
    picks = {}
    for items in by_track.values():
        items.sort()
        _, det_id, record = items[len(items) // 2]
        picks[det_id] = record
    return picks


def _truth_key(det_id: str) -> tuple[str, int, int]:
    video_id, frame, ordinal = det_id.split(":")
    return video_id, int(frame), int(ordinal)


def run_demo(config: DemoConfig) -> dict:
    """Run every step and write demo_report.json and demo_report.html into ``config.out``."""
    out = config.out
    _prepare_out(out)
    started = time.perf_counter()
    timings = {}

    t = _step(1, "rendering the training world (identities disjoint from the archive's) and exporting ReID crops")
    export_reid_crops(out / "train_crops", config.train_world(), train_fraction=config.train_fraction)
    timings["render_train_s"] = time.perf_counter() - t

    epochs, minutes = (40, 0.5) if config.quick else (config.train_epochs, config.train_minutes)
    t = _step(2, f"training KPR ({epochs} epochs, at most {minutes:g} min)")
    training = train(TrainConfig(data_root=str(out / "train_crops"), out=str(out / "model"),
                                 preset="tiny" if config.quick else "demo", epochs=epochs, max_minutes=minutes))
    timings["train_s"] = time.perf_counter() - t

    t = _step(3, "rendering the multi-camera archive")
    videos = generate_archive(out / "archive", config.archive_world())
    timings["render_archive_s"] = time.perf_counter() - t

    t = _step(4, "ingesting the archive (Prefect flow, Ray stages, LanceDB store)")
    ingest = ingest_archive(IngestInputs(str(out / "archive"), str(out / "store"), str(out / "model")),
                            IngestOptions(target_fps=config.fps))
    timings["ingest_s"] = time.perf_counter() - t

    t = _step(5, "querying every tracklet in the other cameras")
    store = Store.open(str(out / "store"), create=False)
    truth = archive_truth({str(p): content_hash(p) for p in videos})
    queries = _queries(store, truth)
    search = PersonSearch(store)
    gallery_size = store.count_detections()
    ranked, sections, shown = [], [], set()
    for det_id, record in sorted(queries.items(), key=lambda kv: (kv[1].identity, kv[1].camera_id)):
        hits = search.by_detection(det_id, k=gallery_size, other_cameras_only=True, candidates=gallery_size)
        identities = [truth[_truth_key(h.detection_id)].identity for h in hits]
        ranked.append([i == record.identity for i in identities])
        if record.identity not in shown:  # the report shows each identity's top 8 people, as kpr search lists them
            shown.add(record.identity)
            query, filters = search.detection_query(det_id)
            people = search.people(query, k=8, filters=filters)
            section = people_section(f"{record.identity} seen by {record.camera_id}",
                                     store.get_detection(det_id)["thumbnail"], people)
            found = [truth[_truth_key(person.best.detection_id)].identity for person in people]
            sections.append(replace(section, correct=[i == record.identity for i in found],
                                    query_caption=f"query {record.camera_id}",
                                    hit_captions=[f"{i}\n{c}" for i, c in zip(found, section.hit_captions)]))
    timings["query_s"] = time.perf_counter() - t

    metrics, chance = metrics_from_matches(ranked), chance_metrics(ranked)
    report = {
        "queries": len(ranked), "identities": len(shown), "cameras": len({r.camera_id for r in truth.values()}),
        "gallery_detections": gallery_size,
        "cross_camera_top1": metrics.rank1, "cross_camera_map": metrics.map, "cross_camera_rank5": float(metrics.cmc[4]),
        "chance_top1": chance["rank1"], "chance_map": chance["map"],
        "wall_s": time.perf_counter() - started, "timings_s": timings,
        "training": training, "ingest": ingest,
    }
    (out / "demo_report.json").write_text(json.dumps(report, indent=2, default=str))
    summary = {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in report.items() if not isinstance(v, dict)}
    write_results_html(out / "demo_report.html", "kpr demo: cross-camera search on a synthetic archive", sections, summary)
    print(f"cross-camera top-1 {metrics.rank1:.3f} (chance {chance['rank1']:.3f}), mAP {metrics.map:.3f} "
          f"(chance {chance['map']:.3f}) over {len(ranked)} queries; {report['wall_s']:.0f} s in all")
    print(f"report: {out / 'demo_report.json'} and {out / 'demo_report.html'}")
    return report
