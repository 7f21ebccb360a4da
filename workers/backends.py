"""Choosing and building the detection + pose backend of an ingestion run.

- ``annotations``: people (and keypoints, when the file has them) from each video's annotation file
  (kpr-sidecar-v1, PoseTrack21, COCO, MOT: workers/annotations.py);
- ``yolox``: person boxes from a YOLOX ONNX file (``detector_model``);
- ``openpifpaf``: boxes + keypoints from an OpenPifPaf checkpoint (optional extra).
A detector's boxes (yolox, openpifpaf) below ``min_score`` or shorter than ``min_box_height`` pixels
are dropped first (too unsure or too small to re-identify, and they would cost pose and embedding
time); annotation files are taken as they are. With ``pose_model`` (a MoveNet SinglePose
.tflite), detections without keypoints (YOLOX boxes, MOT boxes) get theirs top-down from MoveNet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from workers.annotations import AnnotationsBackend, find_sidecar, load_sidecar
from workers.detections import DetectionBackend, PersonDetection
from workers.errors import AnnotationError, WorkerError
from workers.movenet import MoveNet, check_movenet_file, is_tflite_file
from workers.openpifpaf_backend import OpenPifPafBackend, check_checkpoint, import_openpifpaf
from workers.records import DecodedFrame
from workers.yolox import YoloxBackend, YoloxDetector, check_yolox_file

BACKENDS = ("annotations", "yolox", "openpifpaf")
GPU_BACKENDS = ("yolox", "openpifpaf")


def _model_file(path: str, what: str) -> None:
    """WorkerError unless ``path`` is an existing file."""
    if not Path(path).is_file():
        raise WorkerError(f"{path}: {what} not found")


@dataclass(frozen=True)
class BackendConfig:
    """Which backend finds people and their keypoints, with its model files; checked when made, so a value is
    always usable (where the models run and with how many threads is up to the worker that loads them)."""

    name: str = "annotations"
    detector_model: str | None = None
    pose_model: str | None = None
    openpifpaf_checkpoint: str | None = None
    min_score: float = 0.3         # detector score threshold (yolox, openpifpaf)
    min_box_height: float = 48.0   # detector boxes shorter than this many pixels are dropped (yolox, openpifpaf)

    def __post_init__(self) -> None:
        """WorkerError with one clear line for an unknown backend, a missing file or package, or a bad option."""
        if self.name not in BACKENDS:
            raise WorkerError(f"unknown detection backend {self.name!r} (choices: {', '.join(BACKENDS)})")
        if not (isinstance(self.min_score, (int, float)) and math.isfinite(self.min_score) and 0 <= self.min_score <= 1):
            raise WorkerError(f"min_score must be a number in [0, 1], got {self.min_score!r}")
        if not (isinstance(self.min_box_height, (int, float)) and 0 <= self.min_box_height < math.inf):
            raise WorkerError(f"min_box_height must be a number of pixels >= 0, got {self.min_box_height!r}")
        if self.name == "yolox":
            if not self.detector_model:
                raise WorkerError("the yolox backend needs --detector-model: a YOLOX ONNX file (see README)")
            _model_file(self.detector_model, "YOLOX ONNX detector model")
        if self.name == "openpifpaf":
            if self.pose_model:
                raise WorkerError("the openpifpaf backend finds keypoints itself: drop --pose-model")
            check_checkpoint(self.openpifpaf_checkpoint)
            import_openpifpaf()
        if self.pose_model:
            _model_file(self.pose_model, "MoveNet pose model")

    def uses_gpu(self, device: str) -> bool:
        """True when ``device`` is a GPU and the backend runs a model on it (MoveNet always runs on the CPU)."""
        return device.startswith("cuda") and self.name in GPU_BACKENDS


def check_model_files(config: BackendConfig) -> None:
    """WorkerError, one line, for a model file of the wrong kind (a MoveNet .tflite or a ReID ONNX as the detector,
    an ONNX file as the pose model): each file is opened as its backend will open it, on the CPU, so the mistake
    shows before any work starts instead of on every worker."""
    if config.name == "yolox":
        if is_tflite_file(config.detector_model):
            raise WorkerError(f"{config.detector_model}: a TFLite model, not a YOLOX ONNX detector "
                              f"(a MoveNet .tflite goes to --pose-model)")
        check_yolox_file(config.detector_model)
    if config.pose_model:
        check_movenet_file(config.pose_model)


def check_annotation_files(config: BackendConfig, videos: Sequence[Path]) -> None:
    """With the annotations backend, WorkerError, one line, when no video has an annotation file beside it: plain
    CCTV videos need a detector, and the line says which options give one. When only some lack one, those fail
    one by one with their reason as any unreadable video does, and the others are ingested."""
    if config.name != "annotations":
        return
    missing = [video for video in videos if not _has_annotation_file(video)]
    if missing and len(missing) == len(videos):
        raise WorkerError(f"none of the {len(videos)} videos has an annotation file (e.g. {missing[0]}) for the "
                          f"annotations backend: plain videos need a detector, pass --backend yolox --detector-model "
                          f"YOLOX.onnx --pose-model MOVENET.tflite or set KPR_DETECTOR_MODEL and KPR_POSE_MODEL "
                          f"(README: detection backends)")


def _has_annotation_file(video: Path) -> bool:
    """Whether an annotation file of ``video`` lies where the annotations backend looks."""
    try:
        find_sidecar(video)
    except AnnotationError:
        return False
    return True


def check_device_here(device: str) -> None:
    """WorkerError, one line, when ``device`` is a CUDA device that this machine lacks (for a run on a local Ray,
    whose workers are on this machine)."""
    if not device.startswith("cuda"):
        return
    import torch

    count, index = torch.cuda.device_count(), int(device.partition(":")[2] or 0)
    if index >= count:
        have = f"only cuda:0..cuda:{count - 1}" if count else "no CUDA device"
        raise WorkerError(f"--device {device}: this machine has {have}; use --device cpu"
                          f"{'' if count else ' (or --ray-address of a cluster with GPUs)'}")


class SmallBoxFilter:
    """Another backend's detections without boxes shorter than ``min_height`` pixels; ``dropped`` counts them."""

    def __init__(self, detector: DetectionBackend, min_height: float):
        self.detector, self.min_height, self.dropped = detector, min_height, 0
        self.name = detector.name

    def detect(self, video_uri: str, frames: Sequence[DecodedFrame]) -> list[list[PersonDetection]]:
        """The detector's people of each frame that are at least ``min_height`` pixels tall."""
        found = self.detector.detect(video_uri, frames)
        kept = [[person for person in people if person.bbox[3] >= self.min_height] for people in found]
        self.dropped += sum(len(people) for people in found) - sum(len(people) for people in kept)
        return kept


class TopDownPose:
    """Another backend's (filtered) detections, those without keypoints given MoveNet's."""

    def __init__(self, detector: SmallBoxFilter, pose: MoveNet):
        self.detector, self.pose = detector, pose
        self.name = f"{detector.name}+movenet"

    @property
    def dropped(self) -> int:
        """Boxes the filter before pose dropped so far."""
        return self.detector.dropped

    def detect(self, video_uri: str, frames: Sequence[DecodedFrame]) -> list[list[PersonDetection]]:
        """The detector's people of each frame, with keypoints for all of them."""
        found = self.detector.detect(video_uri, frames)
        return [self.pose.add_keypoints(frame.image, people) for frame, people in zip(frames, found)]


def make_backend(config: BackendConfig, device: str = "cpu",
                 threads: int | None = None) -> SmallBoxFilter | TopDownPose:
    """The backend ``config`` describes, its models loaded on ``device`` with ``threads`` CPU threads each (None: the
    runtime's default, all cores), small boxes dropped before pose; build one per worker, not per video.
    Its ``dropped`` counts the boxes dropped for their size."""
    backend: DetectionBackend
    if config.name == "annotations":
        backend = AnnotationsBackend()
    elif config.name == "yolox":
        backend = YoloxBackend(YoloxDetector(config.detector_model, device, config.min_score, threads=threads))
    else:
        backend = OpenPifPafBackend(config.openpifpaf_checkpoint, device, config.min_score)
    sized = SmallBoxFilter(backend, 0.0 if config.name == "annotations" else config.min_box_height)
    return TopDownPose(sized, MoveNet(config.pose_model, threads)) if config.pose_model else sized


def video_camera_and_start(config: BackendConfig, video_uri: str) -> tuple[str | None, float | None]:
    """Camera id and start time (UTC epoch s) of a video when its annotation file says (kpr-sidecar-v1 only),
    else (None, None). With the annotations backend, a missing or bad file raises AnnotationError."""
    if config.name != "annotations":
        return None, None
    sidecar = load_sidecar(find_sidecar(video_uri))
    return sidecar.camera_id, sidecar.start_time
