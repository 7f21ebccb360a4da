"""Person crops from frames: pixels, keypoint prompts in crop coordinates, JPEG thumbnails."""
from __future__ import annotations

import cv2
import numpy as np

from workers.detections import PersonDetection
from workers.records import PersonCrop

THUMBNAIL_HEIGHT = 128


def _clip_box(bbox: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _to_crop(keypoints: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Shift keypoints into crop coordinates; those falling outside the crop lose their confidence."""
    out = keypoints.astype(np.float32).copy()
    out[:, 0] -= x0
    out[:, 1] -= y0
    inside = (out[:, 0] >= 0) & (out[:, 0] < x1 - x0) & (out[:, 1] >= 0) & (out[:, 1] < y1 - y0)
    out[~inside, 2] = 0.0
    return out


def cut_person_crops(frame: np.ndarray, detections: list[PersonDetection]) -> list[PersonCrop]:
    """One crop per detection; every other person's keypoints inside the box become negative prompts."""
    height, width = frame.shape[:2]
    crops = []
    for i, det in enumerate(detections):
        x0, y0, x1, y1 = _clip_box(det.bbox, width, height)
        target = _to_crop(det.keypoints, x0, y0, x1, y1)
        others = [_to_crop(o.keypoints, x0, y0, x1, y1) for j, o in enumerate(detections) if j != i]
        others = [o for o in others if o[:, 2].max(initial=0.0) > 0]
        negatives = np.stack(others) if others else np.zeros((0, 17, 3), np.float32)
        crops.append(PersonCrop(np.ascontiguousarray(frame[y0:y1, x0:x1]), target, negatives))
    return crops


def thumbnail_jpeg(crop: np.ndarray, height: int = THUMBNAIL_HEIGHT, quality: int = 80) -> bytes:
    """A small JPEG of an RGB crop, for result pages (kept in the store next to the embeddings)."""
    h, w = crop.shape[:2]
    scale = height / max(h, 1)
    small = cv2.resize(crop, (max(1, round(w * scale)), height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()
