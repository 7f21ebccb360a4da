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
from workers.json_input import finite_number, float_array, read_json

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
    score = finite_number(raw.get("score", 1.0), f"{where}: score")
    return PersonDetection(bbox, score, keypoints, None if track is None else str(track))


def _optional_number(data: dict, key: str, path: Path, positive: bool = False) -> float | None:
    """``data[key]`` as a finite float (> 0 if ``positive``), or None when absent or null."""
    if data.get(key) is None:
        return None
    value = finite_number(data[key], f"{path}: {key}")
    if positive and value <= 0:
        raise AnnotationError(f"{path}: {key} must be positive, got {value:g}")
    return value


def _frame_index(entry: Any, path: Path) -> int:
    """The frame_index of a frame entry: a non-negative integer."""
    value = entry.get("frame_index") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AnnotationError(f"{path}: every frame needs a frame_index >= 0, got {value!r:.60}")
    return value


def load_sidecar(path: str | Path) -> Sidecar:
    """Parse and validate a sidecar file; AnnotationError names the file and the first problem."""
    path = Path(path)
    data = read_json(path, f"{path}: no sidecar annotation file (the annotations backend needs one per video)")
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise AnnotationError(f"{path}: not a {SIDECAR_FORMAT} sidecar")
    camera = data.get("camera_id")
    if camera is not None and not isinstance(camera, str):
        raise AnnotationError(f"{path}: camera_id must be a string, got {camera!r:.60}")
    frames: dict[int, list[PersonDetection]] = {}
    try:
        for entry in data.get("frames", []):
            index = _frame_index(entry, path)
            frames[index] = [_parse_detection(d, f"{path} frame {index}") for d in entry.get("detections", [])]
        tracks = {str(k): str(v.get("identity", "")) for k, v in data.get("tracks", {}).items()}
    except (TypeError, AttributeError) as exc:
        raise AnnotationError(f"{path}: malformed sidecar ({type(exc).__name__}: {exc})") from None
    return Sidecar(path, camera, _optional_number(data, "start_time", path), _optional_number(data, "fps", path, True),
                   frames, tracks)


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
