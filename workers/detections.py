"""The detection + pose backend interface: what every backend returns for a frame."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from workers.decode import DecodedFrame


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
    """Finds people and their keypoints in decoded frames of one video."""

    name: str

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[PersonDetection]]:
        """One list of detections per frame, in the order of ``frames``."""
        ...
