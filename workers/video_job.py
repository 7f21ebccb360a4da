"""Per-video CPU work without Ray: probe and segment a video, detect people in batches of frames, cut crops."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from workers.backends import BackendConfig, make_backend, video_camera_and_start
from workers.crops import PersonCrop, cut_person_crops, thumbnail_jpeg
from workers.decode import DecodedFrame, iter_frame_batches, probe_video
from workers.discover import VideoTask
from workers.segments import Segment, plan_segments


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
class BatchCrops:
    """The detections of one batch of frames: records and their crops (row-aligned), and how many frames it had."""

    frames: int
    records: list[DetectionRecord] = field(default_factory=list)
    crops: list[PersonCrop] = field(default_factory=list)


@dataclass
class VideoCrops:
    """One video's facts, with its detections and their crops once detected."""

    task: VideoTask
    camera_id: str
    start_time: float
    duration: float
    num_frames: int
    frames_sampled: int = 0
    records: list[DetectionRecord] = field(default_factory=list)
    crops: list[PersonCrop] = field(default_factory=list)

    def add(self, batch: BatchCrops) -> None:
        """Append the detections of the next batch of frames."""
        self.frames_sampled += batch.frames
        self.records += batch.records
        self.crops += batch.crops


def detection_id(video_id: str, frame_index: int, ordinal: int) -> str:
    """Stable id of the ``ordinal``-th detection of a frame: the same input always gives the same ids."""
    return f"{video_id}:{frame_index:07d}:{ordinal:03d}"


def plan_video(task: VideoTask, backend: BackendConfig, segment_s: float) -> tuple[VideoCrops, list[Segment]]:
    """``task``'s video facts (camera and start time from its annotations when known) and its segments.

    Without a known start time, the video is taken to end at its file's modification time.
    """
    info = probe_video(task.uri)
    camera, start = video_camera_and_start(backend, task.uri)
    if start is None:
        start = os.path.getmtime(task.uri) - info.duration
    video = VideoCrops(task, camera or task.camera_id, float(start), info.duration, info.num_frames)
    return video, plan_segments(task, info, segment_s)


class FrameDetector:
    """Holds one detection + pose backend (its models load once) and turns batches of frames into crops."""

    def __init__(self, config: BackendConfig):
        self.backend = make_backend(config)

    def detect(self, task: VideoTask, start_time: float, frames: Sequence[DecodedFrame]) -> BatchCrops:
        """Detect people in ``frames`` of ``task``'s video; one record, crop and thumbnail per person."""
        out = BatchCrops(len(frames))
        for frame, detections in zip(frames, self.backend.detect(task.uri, frames)):
            for ordinal, (det, crop) in enumerate(zip(detections, cut_person_crops(frame.image, detections))):
                track = f"{task.video_id[:12]}-t{det.track_id}" if det.track_id is not None else ""
                out.records.append(DetectionRecord(
                    detection_id(task.video_id, frame.frame_index, ordinal), frame.frame_index,
                    start_time + frame.time_s, det.bbox, det.score, det.keypoints, track, thumbnail_jpeg(crop.image)))
                out.crops.append(crop)
        return out


def extract_video_crops(task: VideoTask, target_fps: float | None, backend: BackendConfig = BackendConfig(),
                        batch_frames: int = 16) -> VideoCrops:
    """Decode ``task``'s whole video at ``target_fps``, detect people and cut their crops, in this process."""
    video, _ = plan_video(task, backend, segment_s=float("inf"))
    detector = FrameDetector(backend)
    for frames in iter_frame_batches(task.uri, target_fps, batch_frames):
        video.add(detector.detect(task, video.start_time, frames))
    return video
