"""One archived frame with a detection's box drawn on it, decoded on demand: what lets a person confirm a hit."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from workers.decode import decode_frames
from workers.errors import DecodeError

# The box colour (RGB) and the JPEG quality of a frame shown as evidence.
BOX_RGB = (0, 255, 0)
FRAME_JPEG_QUALITY = 90


def local_video_path(uri: str) -> Path:
    """The file a video uri names (a plain path or file://); DecodeError for an object-store uri."""
    if "://" in uri and not uri.startswith("file://"):
        raise DecodeError(f"{uri}: only local video files can be decoded here")
    return Path(uri.removeprefix("file://"))


def draw_box(frame: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
    """A copy of an RGB ``frame`` with box (x, y, w, h) drawn in BOX_RGB, its line width growing with the frame."""
    out = np.ascontiguousarray(frame).copy()
    x, y, w, h = (float(v) for v in bbox)
    thickness = max(2, round(max(out.shape[:2]) / 320))
    cv2.rectangle(out, (round(x), round(y)), (round(x + w), round(y + h)), BOX_RGB, thickness)
    return out


def frame_with_box(uri: str, frame_index: int, bbox: Sequence[float]) -> bytes:
    """Frame ``frame_index`` of the video at ``uri`` as JPEG bytes with box (x, y, w, h) drawn; DecodeError when the
    video or that frame cannot be read."""
    path = local_video_path(uri)
    frames = list(decode_frames(path, [int(frame_index)], batch_size=1))
    if not frames:
        raise DecodeError(f"{path}: has no frame {frame_index}")
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(draw_box(frames[0][1], bbox), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, FRAME_JPEG_QUALITY])
    if not ok:
        raise DecodeError(f"{path}: frame {frame_index} could not be encoded as JPEG")
    return data.tobytes()
