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
    (result,) = frames_with_boxes(uri, [(frame_index, bbox)])
    if isinstance(result, DecodeError):
        raise result
    return result


def frames_with_boxes(uri: str, boxes: Sequence[tuple[int, Sequence[float]]]) -> list[bytes | DecodeError]:
    """For each (frame index, box) of the video at ``uri``, the frame as JPEG bytes with the box drawn, or the
    DecodeError it got. The video is opened and decoded once for all of them (an evidence bundle of many results
    of one video paid an open and a seek per result), and each frame is encoded as soon as it is decoded."""
    results: list[bytes | DecodeError | None] = [None] * len(boxes)
    wanted: dict[int, list[int]] = {}
    for position, (index, _) in enumerate(boxes):
        wanted.setdefault(int(index), []).append(position)
    try:
        path = local_video_path(uri)
    except DecodeError as exc:
        return [exc] * len(boxes)
    failure = None
    try:
        for index, pixels in decode_frames(path, sorted(wanted)):
            for position in wanted[index]:
                results[position] = _jpeg(path, index, draw_box(pixels, boxes[position][1]))
    except DecodeError as exc:  # the frames decoded before it keep their result
        failure = exc
    return [result if result is not None else failure or DecodeError(f"{path}: has no frame {int(boxes[i][0])}")
            for i, result in enumerate(results)]


def _jpeg(path: Path, frame_index: int, pixels: np.ndarray) -> bytes | DecodeError:
    """RGB ``pixels`` of frame ``frame_index`` as JPEG bytes (a DecodeError naming the frame if encoding fails)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY,
                                                                              FRAME_JPEG_QUALITY])
    return data.tobytes() if ok else DecodeError(f"{path}: frame {frame_index} could not be encoded as JPEG")
