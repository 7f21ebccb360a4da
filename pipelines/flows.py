"""Prefect flows: archive ingestion. Orchestration only; the work lives in workers/ and storage/."""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from tqdm import tqdm

from storage import Store, detection_row, detections_table
from workers.discover import VideoTask, discover_videos
from workers.embed import EmbeddedVideo
from workers.ray_stages import ensure_ray, run_videos


@dataclass
class IngestSummary:
    """The run report of one ingestion: what was done, skipped and failed, and how fast."""

    run_id: str
    videos_found: int = 0
    videos_skipped: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    detections_written: int = 0
    frames_sampled: int = 0
    wall_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def detections_per_s(self) -> float:
        return self.detections_written / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames_sampled / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "detections_per_s": self.detections_per_s, "frames_per_s": self.frames_per_s}

    def markdown(self) -> str:
        lines = [
            f"# Ingestion run {self.run_id}",
            "| videos found | skipped (already done) | done | failed | detections written | sampled frames/s | wall s |",
            "|---|---|---|---|---|---|---|",
            f"| {self.videos_found} | {self.videos_skipped} | {self.videos_done} | {self.videos_failed} "
            f"| {self.detections_written} | {self.frames_per_s:.1f} | {self.wall_s:.1f} |",
        ]
        if self.failures:
            lines += ["", "## Failed videos", *[f"- `{uri}`: {reason}" for uri, reason in self.failures]]
        return "\n".join(lines)


def _video_row(task: VideoTask, model_id: str, run_id: str, **facts) -> dict:
    return {"video_id": task.video_id, "uri": task.uri, "camera_id": facts.pop("camera_id", task.camera_id),
            "model_id": model_id, "run_id": run_id, **facts}


def _detections(video: dict, result: EmbeddedVideo):
    """The store's rows for one embedded video (empty when nobody was detected)."""
    if result.embeddings is None:
        return []
    rows = [detection_row(r.detection_id, video["video_id"], video["camera_id"], r.frame_index, r.timestamp, r.bbox,
                          video["model_id"], r.det_score, r.keypoints, r.track_id, r.thumbnail, video["run_id"])
            for r in result.records]
    return detections_table(rows, result.embeddings)


@task(name="discover-videos")
def discover(archive: str) -> list[VideoTask]:
    """Hash every video of the archive (content hash = video_id)."""
    return discover_videos(archive)


@task(name="ingest-videos")
def ingest_videos(tasks: list[VideoTask], db: str, model: str, model_id: str, target_fps: float, backend: str,
                  summary: IngestSummary, progress: bool) -> IngestSummary:
    """Run the Ray stages over ``tasks`` and commit each video to the store as soon as it is embedded."""
    logger = get_run_logger()
    store = Store.open(db)
    bar = tqdm(total=len(tasks), desc="ingest", unit="video", disable=not progress)
    for outcome in run_videos(tasks, model, target_fps=target_fps, backend=backend):
        if outcome.error is not None:
            store.record_failure(_video_row(outcome.task, model_id, summary.run_id), outcome.error)
            summary.videos_failed += 1
            summary.failures.append((outcome.task.uri, outcome.error))
            logger.warning("failed %s: %s", outcome.task.uri, outcome.error)
        else:
            crops = outcome.result.crops
            video = _video_row(outcome.task, model_id, summary.run_id, camera_id=crops.camera_id,
                               start_time=crops.start_time, duration=crops.duration, num_frames=crops.num_frames)
            summary.detections_written += store.write_video(video, _detections(video, outcome.result))
            summary.videos_done += 1
            summary.frames_sampled += crops.frames_sampled
            logger.info("done %s (%s): %d detections", outcome.task.uri, crops.camera_id, len(crops.records))
        bar.update(1)
        bar.set_postfix(detections=summary.detections_written, failed=summary.videos_failed)
    bar.close()
    if summary.videos_done:
        store.optimize()
    return summary


@flow(name="ingest-archive")
def ingest_archive(archive: str, db: str, model: str, target_fps: float = 5.0, backend: str = "annotations",
                   ray_address: str | None = None, progress: bool = True) -> dict:
    """Ingest every new video of ``archive`` into the LanceDB store ``db`` with the KPR checkpoint ``model``.

    Videos already done with the same model are skipped, so re-runs and grown archives only do new work.
    """
    from kpr_model.model_files import model_id_of

    started = time.perf_counter()
    summary = IngestSummary(run_id=uuid.uuid4().hex[:12])
    model_id = model_id_of(model)
    tasks = discover(archive)
    done = Store.open(db).done_video_ids(model_id)
    todo = [t for t in tasks if t.video_id not in done]
    summary.videos_found, summary.videos_skipped = len(tasks), len(tasks) - len(todo)
    if todo:
        ensure_ray(ray_address)
        summary = ingest_videos(todo, db, model, model_id, target_fps, backend, summary, progress)
    summary.wall_s = time.perf_counter() - started
    create_markdown_artifact(summary.markdown(), key="ingest-report", description="Archive ingestion report")
    return summary.as_dict()
