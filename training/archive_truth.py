"""Ground truth of an annotated archive: which identity each annotated person in each frame is.

Keys are (video_id, frame_index, ordinal of the person in the sidecar's frame entry), the same
triple that names a stored detection, so the sidecars alone say who every detection is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TruthRecord:
    """Who a detection is, whether it is a usable ReID sample, and how much of the person is visible."""

    identity: str
    camera_id: str
    track: str
    frame_index: int
    target: bool
    visible_fraction: float


def archive_truth(video_ids: dict[str, str]) -> dict[tuple[str, int, int], TruthRecord]:
    """Truth of every annotated person, keyed by (video_id, frame_index, ordinal), for ``{video path: video_id}``."""
    truth: dict[tuple[str, int, int], TruthRecord] = {}
    for path, video_id in video_ids.items():
        sidecar = json.loads(Path(path).with_suffix(".json").read_text())
        camera = str(sidecar.get("camera_id") or Path(path).parent.name)
        for frame in sidecar["frames"]:
            index = int(frame["frame_index"])
            for ordinal, det in enumerate(frame["detections"]):
                truth[(video_id, index, ordinal)] = TruthRecord(
                    str(det["identity"]), camera, f"{video_id}:{det['track_id']}", index,
                    bool(det.get("target", True)), float(det.get("visible_fraction", 1.0)))
    return truth
