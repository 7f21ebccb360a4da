"""Prefect flows: archive ingestion. Orchestration only; the work lives in workers/ and storage/."""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field

import ray.exceptions
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from kpr_model.embeddings import ReIDEmbeddings
from pipelines.errors import UserError
from pipelines.ingest_inputs import IngestInputs, store_listed_videos
from pipelines.interrupts import commit_whole
from pipelines.store_cameras import remember_cameras
from storage import Store, StoreError, VideoRows, detection_row, detections_table, tracklet_row, tracklets_table
from workers.discover import ArchiveFiles, VideoTask, discover_videos
from workers.errors import WorkerError
from workers.ingest_options import IngestOptions
from workers.ray_stages import VideoOutcome, ensure_ray, run_videos
from workers.records import EmbeddedVideo
from workers.video_clocks import VideoClocks, video_clocks

INGEST_RETRIES = 2
INGEST_RETRY_DELAY_S = 30
# Commit batching (see _PendingCommits): at most this many videos per commit, waiting at most this long.
COMMIT_VIDEOS = 8
COMMIT_WAIT_S = 2.0
MAINTAIN_COMMITS = 256

# A lost node, actor, object or connection: the same work can succeed on a second try.
_TRANSIENT_RAY_ERRORS = (ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError,
                         ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.RaySystemError,
                         ray.exceptions.RpcError, ray.exceptions.WorkerCrashedError)
# OSErrors that a retry cannot fix: a wrong path or missing rights is the user's to correct.
_PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass
class IngestSummary:
    """The run report of one ingestion: what was done, skipped and failed, and how fast."""

    run_id: str
    videos_found: int = 0
    videos_skipped: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    detections_written: int = 0
    detections_dropped: int = 0        # boxes too small to re-identify (below the backend's min_box_height)
    tracklets_written: int = 0
    frames_sampled: int = 0
    attempts: int = 0
    maintain_s: float = 0.0
    wall_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    aborted: str | None = None  # why the run stopped early (the ingest task failed for good), None if it finished
    cameras_file: str | None = None  # the cameras file that timed the videos, None without one
    cameras_named: int = 0           # cameras it describes
    camera_warnings: list[str] = field(default_factory=list)  # its cameras without video, videos' cameras it lacks

    @property
    def detections_per_s(self) -> float:
        """Detections written per second of the whole run."""
        return self.detections_written / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        """Sampled (decoded and detected) frames per second of the whole run."""
        return self.frames_sampled / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        """The summary as plain data (the flow's return value), throughput included."""
        return {**asdict(self), "detections_per_s": self.detections_per_s, "frames_per_s": self.frames_per_s}

    def markdown(self) -> str:
        """The run report as the Markdown of the flow run's artifact."""
        lines = [
            f"# Ingestion run {self.run_id}",
            "| videos found | skipped (already done) | done | failed | detections written | tracklets written "
            "| sampled frames/s | detections/s | wall s | store upkeep s | task attempts |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {self.videos_found} | {self.videos_skipped} | {self.videos_done} | {self.videos_failed} "
            f"| {self.detections_written} | {self.tracklets_written} | {self.frames_per_s:.1f} "
            f"| {self.detections_per_s:.1f} | {self.wall_s:.1f} | {self.maintain_s:.1f} | {self.attempts} |",
            "",
            f"Cameras file: `{self.cameras_file}` ({self.cameras_named} cameras)" if self.cameras_file
            else "Cameras file: none (video times from sidecars or file times, in UTC)",
            *[f"- warning: {warning}" for warning in self.camera_warnings],
        ]
        if self.aborted:
            lines += ["", f"**Run aborted**: {self.aborted}. The videos counted done above are stored; "
                          "a re-run continues with the rest."]
        if self.failures:
            lines += ["", "## Failed videos", *[f"- `{uri}`: {reason}" for uri, reason in self.failures]]
        return "\n".join(lines)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away on a retry: a lost Ray node/actor/object, a dropped connection, an object-store IO error.

    The project's own errors (a bad option, a missing model, a store refusing a batch) never are.
    """
    if isinstance(exc, (UserError, WorkerError, StoreError)):
        return False
    if isinstance(exc, _TRANSIENT_RAY_ERRORS):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def retry_if_transient(task_, task_run, state) -> bool:
    """Prefect retry condition of the ingest task: retry only when the attempt died of a transient error."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


def _video_row(task_: VideoTask, model_id: str, run_id: str, **facts) -> dict:
    """The store's video dict of ``task_`` (facts found while decoding override the discovered ones)."""
    camera_id = facts.pop("camera_id", None) or task_.camera_id
    return {"video_id": task_.video_id, "uri": task_.uri, "camera_id": camera_id, "model_id": model_id,
            "run_id": run_id, **facts}


def _detections(video: dict, result: EmbeddedVideo):
    """The store's detection rows of one embedded video (empty when nobody was detected)."""
    if result.embeddings is None:
        return []
    rows = [detection_row(r.detection_id, video["video_id"], video["camera_id"], r.frame_index, r.timestamp, r.bbox,
                          video["model_id"], r.det_score, r.keypoints, r.track_id, r.thumbnail, video["run_id"])
            for r in result.records]
    return detections_table(rows, result.embeddings)


def _tracklets(video: dict, result: EmbeddedVideo):
    """The store's tracklet rows of one embedded video, with their aggregated embeddings (None when it has none)."""
    if not result.tracklets:
        return None
    rows = [tracklet_row(t.track_id, video["video_id"], video["camera_id"], t.t_start, t.t_end, t.n_detections,
                         t.best_detection_id, t.thumbnail, video["model_id"], video["run_id"])
            for t in result.tracklets]
    return tracklets_table(rows, ReIDEmbeddings.concat([t.embeddings for t in result.tracklets]))


def _maintain(store: Store, summary: IngestSummary, logger) -> None:
    """Maintain the store after commits, best effort: the videos are stored already, and a compaction that loses a
    race with another writer's commit (two runs ending together) is done by the next run or `kpr maintain`."""
    try:
        summary.maintain_s += store.maintain()["seconds"]
    except (RuntimeError, OSError, ValueError) as exc:
        logger.warning("store maintenance left for later (run kpr maintain): %s", str(exc).splitlines()[0][:300])


class _PendingCommits:
    """Embedded videos waiting for their commit: several videos per commit keep the store's cost per video small.

    A video is committed at once when the last commit is older than COMMIT_WAIT_S (slow videos never
    wait), else with the next ones, COMMIT_VIDEOS at most. Every MAINTAIN_COMMITS commits the store
    is maintained, so a long run does not pile up fragments that make every commit slower.
    """

    def __init__(self, store: Store, model_id: str, summary: IngestSummary, logger) -> None:
        self.store, self.model_id, self.summary, self.logger = store, model_id, summary, logger
        self.videos: list[tuple[dict, VideoOutcome]] = []
        self.last_commit = -float("inf")
        self.commits = 0

    def add(self, outcome: VideoOutcome) -> None:
        """Queue one embedded video; commit the queue when it is full or the last commit is old enough."""
        facts = outcome.result.facts
        video = _video_row(outcome.task, self.model_id, self.summary.run_id, camera_id=facts.camera_id,
                           start_time=facts.start_time, duration=facts.duration, num_frames=facts.num_frames)
        self.videos.append((video, outcome))
        if len(self.videos) >= COMMIT_VIDEOS or time.monotonic() - self.last_commit >= COMMIT_WAIT_S:
            self.flush()

    def flush(self) -> None:
        """Commit the queued videos (a Ctrl-C waits for the commit, so each video is stored whole or not at all)."""
        queued, self.videos = self.videos, []
        if not queued:
            return
        batch = [VideoRows(video, _detections(video, outcome.result), _tracklets(video, outcome.result))
                 for video, outcome in queued]
        with commit_whole():
            self.summary.detections_written += self.store.write_videos(batch)
        for (video, outcome), rows in zip(queued, batch):
            result = outcome.result
            self.summary.tracklets_written += 0 if rows.tracklets is None else rows.tracklets.num_rows
            self.summary.videos_done += 1
            self.summary.frames_sampled += result.frames_sampled
            self.summary.detections_dropped += result.dropped
            self.logger.info("done %s (%s): %d detections, %d tracklets, %d small boxes dropped", outcome.task.uri,
                             video["camera_id"], len(result.records), len(result.tracklets), result.dropped)
        self.last_commit, self.commits = time.monotonic(), self.commits + 1
        if self.commits % MAINTAIN_COMMITS == 0:
            _maintain(self.store, self.summary, self.logger)


def _video_cameras(store: Store, tasks: list[VideoTask]) -> set[str]:
    """The cameras of the archive's videos: as stored (an annotation file may name it), else their folder's."""
    stored = {row["video_id"]: row["camera_id"] for row in store.video_rows()}
    return {stored.get(task.video_id, task.camera_id) for task in tasks}


@task(name="discover-videos")
def discover(archive: ArchiveFiles) -> list[VideoTask]:
    """Hash every video of the archive (content hash = video_id)."""
    return discover_videos(archive)


@task(name="ingest-videos", retries=INGEST_RETRIES, retry_delay_seconds=INGEST_RETRY_DELAY_S,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def ingest_videos(tasks: list[VideoTask], inputs: IngestInputs, options: IngestOptions, ray_address: str | None,
                  summary: IngestSummary, progress: bool, clocks: VideoClocks = VideoClocks()) -> IngestSummary:
    """Run the Ray stages over ``tasks`` and commit each video (detections + tracklets) as soon as it is embedded.

    ``clocks`` correct the videos' start times as the cameras file says. Retried on transient errors only.
    Prefect hands every attempt the same ``summary``, so an attempt starts with the videos neither done in
    the store nor already reported failed by this run. Ends
    with Store.maintain, so the store stays fast to search as it grows: compaction and scalar indexes
    take ~0.05 s on a small store; the ANN index build (from 10k detections, again at 2x growth) takes
    ~30 s at 200k rows, small next to ingesting those rows.
    """
    logger = get_run_logger()
    summary.attempts += 1
    store, model_id = inputs.store, inputs.model_id
    done, failed = store.done_video_ids(model_id), {uri for uri, _ in summary.failures}
    todo = [t for t in tasks if t.video_id not in done and t.uri not in failed]
    if len(todo) < len(tasks):
        logger.info("attempt %d: %d of %d videos left", summary.attempts, len(todo), len(tasks))
    if not todo:
        return summary
    ensure_ray(ray_address)
    pending = _PendingCommits(store, model_id, summary, logger)
    with tqdm(total=len(todo), desc="ingest", unit="video", disable=not progress) as bar:
        try:
            for outcome in run_videos(todo, inputs.model, options, model_input=inputs.model_input, clocks=clocks):
                if outcome.error is not None:
                    store.record_failure(_video_row(outcome.task, model_id, summary.run_id), outcome.error)
                    summary.videos_failed += 1
                    summary.failures.append((outcome.task.uri, outcome.error))
                    logger.warning("failed %s: %s", outcome.task.uri, outcome.error)
                else:
                    pending.add(outcome)
                bar.update(1)
                bar.set_postfix(detections=summary.detections_written, failed=summary.videos_failed)
        finally:  # a Ctrl-C or a failed attempt still stores the videos already embedded
            pending.flush()
    if summary.videos_done:
        _maintain(store, summary, logger)
    return summary


@flow(name="ingest-archive")
def ingest_archive(inputs: IngestInputs, options: IngestOptions = IngestOptions(),
                   ray_address: str | None = None, progress: bool = True) -> dict:
    """Ingest every new video of ``inputs.archive`` into the store ``inputs.db`` with the KPR model ``inputs.model``.

    ``options.backend`` finds the people (annotations | yolox | openpifpaf, with its model files),
    ``options.device`` runs the models, ``options.segment_s`` splits videos into work items for the
    detection and embedding actors. Videos already done with the same model are skipped, so re-runs
    and grown archives only do new work. Publishes the run report as the artifact ``ingest-report``.
    """
    started = time.perf_counter()
    inputs.open()
    if inputs.adopt_model():
        get_run_logger().warning("dropped the store's embeddings of its former model: every video it lists is "
                                 "re-embedded with %s (model %s)", inputs.model, inputs.model_id)
    summary = IngestSummary(run_id=uuid.uuid4().hex[:12], cameras_file=inputs.cameras.path,
                            cameras_named=len(inputs.cameras.cameras))
    if remember_cameras(inputs.store, inputs.cameras):
        get_run_logger().info("the store now remembers cameras file %s: kpr serve and kpr journey use it",
                              inputs.cameras.path)
    tasks = discover(inputs.videos)
    tasks += store_listed_videos(inputs.store, inputs.model_id, tasks)
    done = inputs.store.done_video_ids(inputs.model_id)
    todo = [t for t in tasks if t.video_id not in done]
    summary.videos_found, summary.videos_skipped = len(tasks), len(tasks) - len(todo)
    try:
        if todo:
            clocks = video_clocks(inputs.cameras, tasks, options.backend)
            summary = ingest_videos(todo, inputs, options, ray_address, summary, progress, clocks)
        summary.camera_warnings = inputs.cameras.mismatches(_video_cameras(inputs.store, tasks))
    except KeyboardInterrupt:
        summary.aborted = "interrupted (Ctrl-C)"
        raise
    except Exception as exc:
        summary.aborted = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise
    finally:  # the report is published for a failed run too: what got stored, and why it stopped
        summary.wall_s = time.perf_counter() - started
        create_markdown_artifact(summary.markdown(), key="ingest-report", description="Archive ingestion report")
    return summary.as_dict()
