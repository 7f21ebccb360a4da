"""The detection + pose backend interface: what every backend returns for a frame."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from kpr_model.keypoints import NUM_KEYPOINTS
from workers.records import DecodedFrame


@dataclass
class PersonDetection:
    """One person in one frame: box (x, y, w, h), score, COCO-17 keypoints (x, y, conf) in frame pixels.

    ``track_id`` is set by backends that know identities over time (sidecar annotations);
    otherwise the tracker assigns one.
    """

    bbox: np.ndarray
    score: float
    keypoints: np.ndarray
    track_id: str | None = None


class DetectionBackend(Protocol):
    """Finds people and their keypoints in decoded frames; created once per worker, it serves many videos."""

    name: str

    def detect(self, video_uri: str, frames: Sequence[DecodedFrame]) -> list[list[PersonDetection]]:
        """One list of detections per frame of ``video_uri``, in the order of ``frames``."""
        ...


def no_keypoints() -> np.ndarray:
    """The keypoints of a detection whose pose is unknown: all confidences zero."""
    return np.zeros((NUM_KEYPOINTS, 3), np.float32)


def has_keypoints(detection: PersonDetection) -> bool:
    """Whether any keypoint of ``detection`` has a confidence above zero."""
    return bool(np.any(detection.keypoints[:, 2] > 0))
