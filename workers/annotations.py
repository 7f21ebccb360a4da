"""The `annotations` backend: people and keypoints read from an annotation file next to each video.

Where the file of ``DIR/NAME.mp4`` lives (first found wins): ``DIR/NAME.json``, ``DIR/NAME.gt.txt``,
``DIR/NAME.txt``, then ``DIR/gt/gt.txt`` (the MOT sequence layout: one video per sequence folder).
A ``.json`` file's format is told from its content: ``"format": "kpr-sidecar-v1"``, else a COCO-style
document whose images carry ``vid_id`` is PoseTrack21, any other COCO-style document is COCO.
A ``.txt`` file is MOT ``gt.txt``. Track ids from the file become ``PersonDetection.track_id``.
Rules of the third-party formats: workers/annotation_formats.py.

Sidecar format ``kpr-sidecar-v1`` (what the synthetic world writes; see README):
``{"format", "camera_id", "start_time", "fps", "width", "height", "num_frames",
"tracks": {id: {...}}, "frames": [{"frame_index", "detections": [{"track_id", "bbox": [x, y, w, h],
"keypoints": [[x, y, v] x 17], ...}]}]}`` with COCO visibility v (0 outside, 1 occluded, 2 visible).
Only this format knows the camera and the start time of the video.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kpr_model.keypoints import SIDECAR_FORMAT
from workers.annotation_formats import MOT, POSETRACK21, coco_style_format, parse_coco_style, parse_mot
from workers.detections import PersonDetection
from workers.errors import AnnotationError
from workers.json_input import finite_number, float_array, read_json
from workers.records import DecodedFrame


@dataclass
class Sidecar:
    """A parsed annotation file: video-level facts (kpr-sidecar-v1 only) and the detections of each annotated frame."""

    path: Path
    camera_id: str | None
    start_time: float | None
    fps: float | None
    frames: dict[int, list[PersonDetection]] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    format: str = SIDECAR_FORMAT


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


def _kpr_sidecar(data: dict, path: Path) -> Sidecar:
    """A validated kpr-sidecar-v1 document."""
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


def load_sidecar(path: str | Path) -> Sidecar:
    """Parse and validate an annotation file of any supported format (see the module docstring);
    AnnotationError names the file and the first problem."""
    path = Path(path)
    missing = f"{path}: no sidecar annotation file (the annotations backend needs one per video)"
    if path.suffix == ".txt":
        if not path.is_file():
            raise AnnotationError(missing)
        return Sidecar(path, None, None, None, parse_mot(path), format=MOT)
    data = read_json(path, missing)
    if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT:
        return _kpr_sidecar(data, path)
    coco_format = coco_style_format(data)
    if coco_format is None:
        raise AnnotationError(f"{path}: not a {SIDECAR_FORMAT} sidecar, nor a PoseTrack21 or COCO json "
                              "(needs 'images' and 'annotations' lists)")
    return Sidecar(path, None, None, None, parse_coco_style(data, path, coco_format == POSETRACK21), format=coco_format)


def find_sidecar(video_path: str | Path) -> Path:
    """The annotation file of a video (search order: module docstring), or AnnotationError listing where it looked."""
    video = Path(video_path)
    candidates = [sidecar_path(video), video.with_suffix(".gt.txt"), video.with_suffix(".txt"), video.parent / "gt" / "gt.txt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise AnnotationError(f"{video}: no sidecar annotation file (the annotations backend needs one per video); "
                          f"looked for {', '.join(c.name if c.parent == video.parent else 'gt/gt.txt' for c in candidates)}")


class AnnotationsBackend:
    """Detections and keypoints from each video's annotation file instead of a detector + pose model.

    One object serves many videos: it keeps the parsed file of the last video asked for.
    """

    name = "annotations"

    def __init__(self) -> None:
        self._current: tuple[str, Sidecar] | None = None

    def sidecar(self, video_uri: str) -> Sidecar:
        """The parsed annotation file of ``video_uri`` (parsed once while the same video is asked for)."""
        if self._current is None or self._current[0] != video_uri:
            self._current = (video_uri, load_sidecar(find_sidecar(video_uri)))
        return self._current[1]

    def detect(self, video_uri: str, frames: Sequence[DecodedFrame]) -> list[list[PersonDetection]]:
        """The annotated people of each frame (none for frames the file does not list)."""
        sidecar = self.sidecar(video_uri)
        return [list(sidecar.frames.get(frame.frame_index, [])) for frame in frames]
