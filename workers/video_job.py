"""Per-video CPU work: decode sampled frames, detect people, cut crops and thumbnails."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from workers.annotations import AnnotationsBackend
from workers.crops import PersonCrop, cut_person_crops, thumbnail_jpeg
from workers.decode import iter_frame_batches, probe_video
from workers.detections import DetectionBackend
from workers.discover import VideoTask
from workers.errors import WorkerError

BACKENDS = ("annotations",)


@dataclass
class DetectionRecord:
    """Everything stored about a detection except its embeddings."""

    detection_id: str
    frame_index: int
    timestamp: float
    bbox: np.ndarray
    det_score: float
    keypoints: np.ndarray
    track_id: str
    thumbnail: bytes


@dataclass
class VideoCrops:
    """The output of the CPU stage for one video: video facts, detections and their crops."""

    task: VideoTask
    camera_id: str
    start_time: float
    duration: float
    num_frames: int
    frames_sampled: int = 0
    records: list[DetectionRecord] = field(default_factory=list)
    crops: list[PersonCrop] = field(default_factory=list)


def make_backend(name: str, video_path: str) -> DetectionBackend:
    """The detection + pose backend called ``name`` for one video."""
    if name == "annotations":
        return AnnotationsBackend.for_video(video_path)
    raise WorkerError(f"unknown detection backend {name!r} (available: {', '.join(BACKENDS)})")


def detection_id(video_id: str, frame_index: int, ordinal: int) -> str:
    """Stable id of the ``ordinal``-th detection of a frame: the same input always gives the same ids."""
    return f"{video_id}:{frame_index:07d}:{ordinal:03d}"


def extract_video_crops(task: VideoTask, target_fps: float | None, backend_name: str = "annotations",
                        batch_frames: int = 16) -> VideoCrops:
    """Decode ``task``'s video at ``target_fps``, detect people, and cut their crops in one pass."""
    info = probe_video(task.uri)
    backend = make_backend(backend_name, task.uri)
    sidecar = getattr(backend, "sidecar", None)
    camera = (sidecar.camera_id if sidecar and sidecar.camera_id else None) or task.camera_id
    start = sidecar.start_time if sidecar and sidecar.start_time is not None else os.path.getmtime(task.uri) - info.duration
    out = VideoCrops(task, camera, float(start), info.duration, info.num_frames)
    for batch in iter_frame_batches(task.uri, target_fps, batch_frames):
        out.frames_sampled += len(batch)
        _add_batch(out, backend, batch)
    return out


def _add_batch(out: VideoCrops, backend: DetectionBackend, frames: list) -> None:
    for frame, detections in zip(frames, backend.detect(frames)):
        for ordinal, (det, crop) in enumerate(zip(detections, cut_person_crops(frame.image, detections))):
            track = f"{out.task.video_id[:12]}-t{det.track_id}" if det.track_id is not None else ""
            out.records.append(DetectionRecord(
                detection_id(out.task.video_id, frame.frame_index, ordinal), frame.frame_index,
                out.start_time + frame.time_s, det.bbox, det.score, det.keypoints, track, thumbnail_jpeg(crop.image)))
            out.crops.append(crop)
