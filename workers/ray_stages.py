"""Ray execution of ingestion: decode tasks per video segment stream frame batches to a detect/pose actor pool,
whose crops go to a KPR embed actor pool; a video is stitched, tracked and yielded once all its segments are done.

The same code runs on a local Ray (started on demand) and on a cluster (``RAY_ADDRESS``).

Backpressure: each decode task is a streaming generator held to one unconsumed batch by Ray, and the driver pulls a
batch only while (batches between decode and embed) + (running decoders) < ``max_batches_in_flight``, so at most that
many decoded frame batches are alive at once and memory stays flat whatever the archive size. At most that many
videos are open (planned, not yet yielded) at once too. A failed segment fails its video; the others go on.

Resources: a decode task takes one CPU. Actors on CPU share the cluster's CPUs minus one, in fractions, so that at
least one decode task can always run (a 2-CPU laptop would otherwise deadlock: actors holding both CPUs, decoders
waiting; with one CPU they reserve none), and each computes with as many threads as its share of the cores (at least
one): more threads than cores only makes the stages fight. An actor on a GPU takes one GPU, or an equal share when
there are fewer GPUs than GPU actors (detect and embed on one GPU: half each).
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import ray

from workers.backends import BackendConfig
from workers.decode import iter_frame_batches
from workers.discover import VideoTask
from workers.embed import Embedder, assemble_video
from workers.errors import WorkerError
from workers.ingest_options import IngestOptions
from workers.ray_address import check_ray_address
from workers.records import BatchCrops, EmbeddedBatch, EmbeddedVideo, VideoFacts
from workers.segments import Segment
from workers.video_clocks import VideoClocks
from workers.video_job import FrameDetector, plan_video

DECODE_CPUS = 1


@dataclass
class VideoOutcome:
    """What happened to one video: embedded detections and tracklets, or the reason it failed."""

    task: VideoTask
    result: EmbeddedVideo | None = None
    error: str | None = None


@dataclass
class StageStats:
    """What the driver saw: the most decoded frame batches alive at once, frames decoded, crops embedded."""

    peak_batches_alive: int = 0
    frames: int = 0
    crops: int = 0


# Ray (2.60) enables token authentication for every new local cluster and says so with a warning at each start: the
# default this project wants, announced on every `kpr ingest`. Only that notice is dropped.
_RAY_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def _not_the_token_notice(record: logging.LogRecord) -> bool:
    """A logging filter that drops Ray's notice that a new local cluster uses token authentication."""
    return not record.getMessage().startswith(_RAY_TOKEN_NOTICE)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` if given (checked first: see check_ray_address), else start a quiet
    local Ray of this process's own, once per process: never another Ray already running on this machine, which a
    plain ray.init() would join.

    ``log_to_driver`` forwards the workers' output (training progress) to this process's terminal.
    """
    if ray.is_initialized():
        return
    # Ray starts its processes with fork+exec; the exec makes LanceDB's fork warning moot.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_ray_address(address)
    kwargs = {} if address else {"num_cpus": num_cpus, "include_dashboard": log_to_driver}
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if _not_the_token_notice not in notices.filters:
        notices.addFilter(_not_the_token_notice)
    ray.init(address=address or "local", ignore_reinit_error=True, log_to_driver=log_to_driver,
             configure_logging=False, **kwargs)


@ray.remote(num_cpus=DECODE_CPUS, max_retries=0)
def _plan(task: VideoTask, options: IngestOptions, clocks: VideoClocks) -> tuple[VideoFacts, list[Segment]]:
    return plan_video(task, options.backend, options.segment_s, clocks)


@ray.remote(num_cpus=DECODE_CPUS, max_retries=0)
def _decode(segment: Segment, target_fps: float | None, batch_frames: int):
    yield from iter_frame_batches(segment.task.uri, target_fps, batch_frames, segment.start_frame, segment.end_frame)


@ray.remote(max_restarts=2)
class DetectActor:
    """A Ray actor holding one FrameDetector, so detection models load once per actor."""

    def __init__(self, config: BackendConfig, device: str, threads: int):
        self.detector = FrameDetector(config, device, threads)

    def detect(self, task: VideoTask, start_time: float, frames) -> BatchCrops:
        return self.detector.detect(task, start_time, frames)


@ray.remote(max_restarts=2)
class EmbedActor:
    """A Ray actor holding one Embedder, so the KPR model loads once per actor."""

    def __init__(self, model: str, device: str, torch_threads: int, model_input: str | None):
        import torch

        torch.set_num_threads(torch_threads)
        self.embedder = Embedder(model, device=device, model_input=model_input)

    def embed(self, batch: BatchCrops) -> EmbeddedBatch:
        return self.embedder.embed_batch(batch)


def _reason(exc: BaseException) -> str:
    """One line saying why a video failed, without Ray's remote traceback."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, WorkerError):
        return str(cause)
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return "the worker process crashed while processing this video"
    if isinstance(exc, ray.exceptions.ActorDiedError):
        return "a detection or embedding worker died while processing this video"
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


def _gpu_share(gpu_actors: int) -> float:
    """GPUs per GPU actor: one each, or an equal share of the cluster's GPUs when there are fewer."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpu_actors and not gpus:
        raise WorkerError("a cuda device was asked for, but the Ray cluster has no GPU")
    return min(1.0, gpus / gpu_actors) if gpu_actors else 0.0


def _start_actors(model: str, options: IngestOptions, model_input: str | None) -> tuple[list, list]:
    """The detect and embed actor pools, loaded and ready (WorkerError when a model cannot be loaded)."""
    detect_gpu, embed_gpu = options.backend.uses_gpu(options.device), options.device.startswith("cuda")
    gpus = _gpu_share(options.detectors * detect_gpu + options.embedders * embed_gpu)
    cpus = ray.cluster_resources().get("CPU", 1)
    cpu_actors = options.detectors * (not detect_gpu) + options.embedders * (not embed_gpu)
    share = math.floor(100 * max(cpus - DECODE_CPUS, 0) / max(cpu_actors, 1)) / 100
    detect = DetectActor.options(num_cpus=0 if detect_gpu else min(1.0, share), num_gpus=gpus * detect_gpu)
    embed = EmbedActor.options(num_cpus=0 if embed_gpu else min(1.0, share), num_gpus=gpus * embed_gpu)
    # Each CPU actor computes with its share of the cores: more threads than cores only makes the stages fight.
    threads = max(1, min(int(share), os.cpu_count() or 1))
    detectors = [detect.remote(options.backend, options.device, threads) for _ in range(options.detectors)]
    embedders = [embed.remote(model, options.device, threads, model_input) for _ in range(options.embedders)]
    try:
        ray.get([actor.__ray_ready__.remote() for actor in detectors + embedders])
    except ray.exceptions.RayError as exc:
        raise WorkerError(f"cannot start the ingestion workers: {_reason(exc)}") from None
    return detectors, embedders


@dataclass
class _Video:
    """The driver's view of one video: its facts once planned, segments not yet decoding, work in flight."""

    task: VideoTask
    facts: VideoFacts | None = None
    segments: deque[Segment] = field(default_factory=deque)
    decoding: int = 0
    embedding: int = 0
    batches: list[EmbeddedBatch] = field(default_factory=list)
    error: str | None = None

    @property
    def done(self) -> bool:
        """Nothing in flight and, unless it failed, nothing left to start."""
        if self.decoding or self.embedding:
            return False
        return bool(self.error) or (self.facts is not None and not self.segments)


class _Driver:
    """Feeds videos through the Ray stages within the backpressure bound and hands back finished videos."""

    def __init__(self, detectors: list, embedders: list, options: IngestOptions, stats: StageStats,
                 clocks: VideoClocks):
        self.detectors, self.embedders, self.options, self.stats = detectors, embedders, options, stats
        self.clocks = ray.put(clocks)  # stored once, not once per video: it may list every video of the archive
        self.pending: dict = {}  # object ref or decode generator -> (its handler, its video)
        self.parked: deque = deque()  # decode generators with a batch ready, waiting for room
        self.open: list[_Video] = []
        self.units = self.decoders = self.submitted = 0
        self.decode_slots = max(1, int(ray.available_resources().get("CPU", 1)))  # CPUs the actors left

    @property
    def alive(self) -> int:
        """Upper bound of decoded frame batches alive: batches between decode and embed + one per running decoder."""
        return self.units + self.decoders

    def run(self, tasks: Sequence[VideoTask]) -> Iterator[VideoOutcome]:
        """Plan at most ``max_batches_in_flight`` videos at once, react to each finished piece of work, yield videos."""
        waiting = deque(tasks)
        while waiting or self.open:
            while waiting and len(self.open) < self.options.max_batches_in_flight:
                video = _Video(waiting.popleft())
                self.open.append(video)
                self.pending[_plan.remote(video.task, self.options, self.clocks)] = (self._on_plan, video)
            self._start_decoders()
            self._pull_parked()
            if self.pending:
                (ready,), _ = ray.wait(list(self.pending), num_returns=1)
                handler, video = self.pending.pop(ready)
                handler(ready, video)
            yield from self._finished()

    def _start_decoders(self) -> None:
        """Start decoding waiting segments, oldest video first, while the bound and the CPUs allow."""
        for video in self.open:
            while video.segments and not video.error and self.alive + 2 <= self.options.max_batches_in_flight \
                    and self.decoders < self.decode_slots:
                generator = _decode.options(num_returns="streaming", _generator_backpressure_num_objects=1).remote(
                    video.segments.popleft(), self.options.target_fps, self.options.batch_frames)
                self.pending[generator] = (self._on_decode, video)
                video.decoding += 1
                self.decoders += 1
                self.stats.peak_batches_alive = max(self.stats.peak_batches_alive, self.alive)

    def _pull_parked(self) -> None:
        """Take batches from decoders that have one ready, while the bound allows."""
        while self.parked and self.alive < self.options.max_batches_in_flight:
            self._on_decode(*self.parked.popleft())

    def _on_plan(self, ref, video: _Video) -> None:
        """Keep the video's facts and queue its segments for decoding."""
        try:
            video.facts, segments = ray.get(ref)
            video.segments.extend(segments)
        except ray.exceptions.RayError as exc:
            video.error = _reason(exc)

    def _on_decode(self, generator, video: _Video) -> None:
        """Send the generator's next frame batch to detection then embedding, or close the finished generator."""
        if not video.error and self.alive >= self.options.max_batches_in_flight:
            self.parked.append((generator, video))
            return
        try:
            frames = None if video.error else next(generator)
        except StopIteration:
            frames = None
        except ray.exceptions.RayError as exc:
            video.error, frames = _reason(exc), None
        if frames is None:
            ray.cancel(generator)
            video.decoding -= 1
            self.decoders -= 1
            return
        detected = self.detectors[self.submitted % len(self.detectors)].detect.remote(
            video.task, video.facts.start_time, frames)
        embedded = self.embedders[self.submitted % len(self.embedders)].embed.remote(detected)
        self.pending[embedded] = (self._on_embed, video)
        self.pending[generator] = (self._on_decode, video)
        self.submitted += 1
        self.units += 1
        video.embedding += 1
        self.stats.peak_batches_alive = max(self.stats.peak_batches_alive, self.alive)

    def _on_embed(self, ref, video: _Video) -> None:
        """Keep an embedded batch for its video (or record why it failed)."""
        self.units -= 1
        video.embedding -= 1
        try:
            batch = ray.get(ref)
        except ray.exceptions.RayError as exc:
            video.error = video.error or _reason(exc)
            return
        video.batches.append(batch)
        self.stats.frames += batch.frames
        self.stats.crops += len(batch.records)

    def _finished(self) -> Iterator[VideoOutcome]:
        """Outcomes of the videos with no work left in flight, in the order they were opened."""
        for video in [v for v in self.open if v.done]:
            self.open.remove(video)
            if video.error:
                yield VideoOutcome(video.task, error=video.error)
            else:
                yield VideoOutcome(video.task, result=assemble_video(video.facts, video.batches))


def run_videos(tasks: Sequence[VideoTask], model: str, options: IngestOptions = IngestOptions(),
               stats: StageStats | None = None, model_input: str | None = None,
               clocks: VideoClocks = VideoClocks()) -> Iterator[VideoOutcome]:
    """Process ``tasks`` on Ray and yield one outcome per video as soon as it is done (any order).

    ``model_input`` is the pixel coding of a global ReID ONNX ``model`` (None: the file's, else BGR 0..255);
    ``clocks`` are the cameras file's time corrections (video_clocks).

    A video whose plan, decoding, detection or embedding fails is yielded with its reason; the others go on.
    ``stats``, when given, is filled in as the run goes.
    """
    ensure_ray()
    detectors, embedders = _start_actors(model, options, model_input)
    try:
        yield from _Driver(detectors, embedders, options, stats or StageStats(), clocks).run(tasks)
    finally:
        for actor in detectors + embedders:
            ray.kill(actor)
