"""The `annotations` backend: people and keypoints read from a sidecar file next to each video.

Sidecar format ``kpr-sidecar-v1`` (what the synthetic world writes; see README):
``{"format", "camera_id", "start_time", "fps", "width", "height", "num_frames",
"tracks": {id: {...}}, "frames": [{"frame_index", "detections": [{"track_id", "bbox": [x, y, w, h],
"keypoints": [[x, y, v] x 17], ...}]}]}`` with COCO visibility v (0 outside, 1 occluded, 2 visible).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workers.decode import DecodedFrame
from workers.detections import PersonDetection
from workers.errors import AnnotationError
from workers.json_input import float_array, read_json

SIDECAR_FORMAT = "kpr-sidecar-v1"


@dataclass
class Sidecar:
    """A parsed sidecar: video-level facts and the detections of each annotated frame."""

    path: Path
    camera_id: str | None
    start_time: float | None
    fps: float | None
    frames: dict[int, list[PersonDetection]] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)


def sidecar_path(video_path: str | Path) -> Path:
    """Where the sidecar of a video lives: same folder, same stem, ``.json``."""
    return Path(video_path).with_suffix(".json")


def _parse_detection(raw: Any, where: str) -> PersonDetection:
    if not isinstance(raw, dict):
        raise AnnotationError(f"{where}: detection is not an object")
    bbox = float_array(raw.get("bbox"), (4,), f"{where}: bbox")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise AnnotationError(f"{where}: bbox width and height must be positive")
    keypoints = float_array(raw.get("keypoints"), (17, 3), f"{where}: keypoints")
    keypoints[:, 2] = (keypoints[:, 2] >= 2).astype(np.float32)
    track = raw.get("track_id")
    return PersonDetection(bbox, float(raw.get("score", 1.0)), keypoints, None if track is None else str(track))


def load_sidecar(path: str | Path) -> Sidecar:
    """Parse and validate a sidecar file; AnnotationError names the file and the first problem."""
    path = Path(path)
    data = read_json(path, f"{path}: no sidecar annotation file (the annotations backend needs one per video)")
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise AnnotationError(f"{path}: not a {SIDECAR_FORMAT} sidecar")
    frames: dict[int, list[PersonDetection]] = {}
    try:
        for entry in data.get("frames", []):
            index = int(entry["frame_index"])
            frames[index] = [_parse_detection(d, f"{path} frame {index}") for d in entry.get("detections", [])]
        tracks = {str(k): str(v.get("identity", "")) for k, v in data.get("tracks", {}).items()}
        start = data.get("start_time")
        fps = data.get("fps")
        return Sidecar(path, data.get("camera_id"), None if start is None else float(start),
                       None if fps is None else float(fps), frames, tracks)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise AnnotationError(f"{path}: malformed sidecar ({type(exc).__name__}: {exc})") from None


class AnnotationsBackend:
    """Detections and keypoints from the video's sidecar file instead of a detector + pose model."""

    name = "annotations"

    def __init__(self, sidecar: Sidecar):
        self.sidecar = sidecar

    @classmethod
    def for_video(cls, video_path: str | Path) -> "AnnotationsBackend":
        return cls(load_sidecar(sidecar_path(video_path)))

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[PersonDetection]]:
        """The annotated people of each frame (none for frames the sidecar does not list)."""
        return [self.sidecar.frames.get(frame.frame_index, []) for frame in frames]
