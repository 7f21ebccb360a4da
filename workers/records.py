"""The stage contract of ingestion: what each stage hands to the next, in one place.

    VideoTask (discover.py) ─plan─► VideoFacts + Segments (segments.py) ─decode─► DecodedFrame batches
    ─detect─► BatchCrops: DetectionRecords and their PersonCrops ─embed─► EmbeddedBatch
    ─assemble + track (per video, in frame order)─► EmbeddedVideo: facts, records, embeddings, Tracklets ─► store

Records travel between Ray processes, so they are plain data. The tracker fills in ``track_id``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpr_model.embeddings import ReIDEmbeddings
from workers.discover import VideoTask


@dataclass(frozen=True)
class VideoFacts:
    """What is known of a video before its frames are decoded: camera, start (UTC epoch s), length."""

    task: VideoTask
    camera_id: str
    start_time: float
    duration: float
    num_frames: int


@dataclass(frozen=True)
class DecodedFrame:
    """One sampled frame: its index in the video, its time in seconds from the video start, RGB pixels."""

    frame_index: int
    time_s: float
    image: np.ndarray


def detection_id(video_id: str, frame_index: int, ordinal: int) -> str:
    """Stable id of the ``ordinal``-th detection of a frame: the same input always gives the same ids."""
    return f"{video_id}:{frame_index:07d}:{ordinal:03d}"


@dataclass
class DetectionRecord:
    """Everything stored about a detection except its embeddings (``track_id`` is set by the tracker)."""

    detection_id: str
    frame_index: int
    timestamp: float
    bbox: np.ndarray
    det_score: float
    keypoints: np.ndarray
    track_id: str
    thumbnail: bytes


@dataclass(frozen=True)
class PersonCrop:
    """A detection cut out of its frame, with the target's keypoints and other people's as negatives."""

    image: np.ndarray
    keypoints: np.ndarray
    negative_keypoints: np.ndarray


@dataclass(frozen=True)
class BatchCrops:
    """The detections of one batch of frames: records and their crops (row-aligned), how many frames it had and
    how many boxes were dropped as too small."""

    frames: int
    records: list[DetectionRecord]
    crops: list[PersonCrop]
    dropped: int


@dataclass(frozen=True)
class EmbeddedBatch:
    """One batch of frames' detection records with their embeddings (row-aligned; None without detections) and how
    many boxes were dropped as too small."""

    frames: int
    records: list[DetectionRecord]
    embeddings: ReIDEmbeddings | None
    dropped: int


@dataclass(frozen=True)
class Tracklet:
    """One person's track within a video: time span, size, aggregated embedding and best thumbnail."""

    track_id: str
    t_start: float
    t_end: float
    n_detections: int
    embeddings: ReIDEmbeddings
    thumbnail: bytes
    best_detection_id: str


@dataclass(frozen=True)
class EmbeddedVideo:
    """A video ready for the store: its facts, detection records in frame order with their embeddings
    (row-aligned; None without detections), its tracklets, how many frames were sampled and how many boxes
    were dropped as too small."""

    facts: VideoFacts
    records: list[DetectionRecord]
    embeddings: ReIDEmbeddings | None
    tracklets: list[Tracklet]
    frames_sampled: int
    dropped: int
