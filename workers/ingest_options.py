"""How an archive is ingested: sampling, segmenting, backend, devices, pool sizes, batching and backpressure."""
from __future__ import annotations

from dataclasses import dataclass, field

from workers.backends import BackendConfig
from workers.errors import WorkerError


@dataclass(frozen=True)
class IngestOptions:
    """Every knob of an ingestion, checked when made: a value is always usable, so no stage checks it again.

    The defaults suit a laptop with a CPU only. `kpr ingest` builds one from its flags, a Prefect
    deployment from its ``options`` parameter (a JSON object of these fields, ``backend`` nested).
    """

    target_fps: float | None = 5.0     # frames sampled per second of video (None: every frame)
    segment_s: float = 60.0            # a video is split into segments of this many seconds (the work items)
    backend: BackendConfig = field(default_factory=BackendConfig)
    device: str = "cpu"                # where the detector and KPR run; "cuda[:N]" -> a GPU (or a share) per actor
    detectors: int = 1                 # detect/pose actor pool size
    embedders: int = 1                 # KPR embed actor pool size
    batch_frames: int = 16             # decoded frames per batch
    max_batches_in_flight: int = 8     # backpressure: decoded frame batches alive at once

    def __post_init__(self) -> None:
        """WorkerError with one clear line for a value that cannot work (the backend checked its own files)."""
        if self.target_fps is not None and not self.target_fps > 0:
            raise WorkerError(f"target fps must be positive, got {self.target_fps}")
        if not self.segment_s > 0:
            raise WorkerError(f"segment length must be positive seconds, got {self.segment_s}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise WorkerError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        for name in ("detectors", "embedders", "batch_frames"):
            if getattr(self, name) < 1:
                raise WorkerError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batches_in_flight < 2:
            raise WorkerError(f"max_batches_in_flight must be at least 2 (one decoding, one detecting), "
                              f"got {self.max_batches_in_flight}")
