"""Ray execution of ingestion: a CPU task per video (decode + detect + crop) feeding KPR embedding actors.

The same code runs on a local Ray (started on demand) and on a cluster (``RAY_ADDRESS``).
Videos flow through a bounded window so memory stays flat however large the archive is.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import ray

from workers.discover import VideoTask
from workers.embed import EmbeddedVideo, Embedder
from workers.errors import WorkerError
from workers.video_job import extract_video_crops


@dataclass
class VideoOutcome:
    """What happened to one video: embedded detections, or the reason it failed."""

    task: VideoTask
    result: EmbeddedVideo | None = None
    error: str | None = None


def ensure_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS`` if given, else start a quiet local Ray once per process.

    ``log_to_driver`` forwards the workers' output (training progress) to this process's terminal.
    """
    if ray.is_initialized():
        return
    # Ray starts its processes with fork+exec; the exec makes LanceDB's fork warning moot.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {} if address else {"num_cpus": num_cpus, "include_dashboard": log_to_driver}
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=log_to_driver, configure_logging=False, **kwargs)


@ray.remote(num_cpus=1, max_retries=0)
def _extract(task: VideoTask, target_fps: float | None, backend: str):
    return extract_video_crops(task, target_fps, backend)


@ray.remote(num_cpus=1)
class EmbedActor:
    """A Ray actor holding one Embedder, so the model loads once per actor, not once per video."""

    def __init__(self, model: str, device: str, torch_threads: int):
        import torch

        torch.set_num_threads(torch_threads)
        self.embedder = Embedder(model, device=device)

    def embed_video(self, video) -> EmbeddedVideo:
        return self.embedder.embed_video(video)


def _reason(exc: BaseException) -> str:
    """One line saying why a video failed, without Ray's remote traceback."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, WorkerError):
        return str(cause)
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return "the worker process crashed while processing this video"
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


def run_videos(tasks: Sequence[VideoTask], model: str, target_fps: float | None = 5.0,
               backend: str = "annotations", num_embedders: int = 1, device: str = "cpu",
               torch_threads: int = 2, max_in_flight: int = 4) -> Iterator[VideoOutcome]:
    """Process ``tasks`` on Ray and yield one outcome per video as soon as it is done (any order)."""
    gpus = 1 if device.startswith("cuda") else 0
    actors = [EmbedActor.options(num_gpus=gpus).remote(model, device, torch_threads) for _ in range(num_embedders)]
    waiting = list(tasks)
    in_flight: dict = {}
    submitted = 0
    while waiting or in_flight:
        while waiting and len(in_flight) < max_in_flight:
            task = waiting.pop(0)
            crops = _extract.remote(task, target_fps, backend)
            in_flight[actors[submitted % len(actors)].embed_video.remote(crops)] = task
            submitted += 1
        (ready,), _ = ray.wait(list(in_flight), num_returns=1)
        task = in_flight.pop(ready)
        try:
            outcome = VideoOutcome(task, result=ray.get(ready))
        except (ray.exceptions.RayError, WorkerError) as exc:
            outcome = VideoOutcome(task, error=_reason(exc))
        yield outcome
