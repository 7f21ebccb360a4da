"""Keypoint prompts a user gives with an image query, validated from JSON (a prompt file or a web request).

One validator serves every accepted form, so the CLI and the web app refuse the same mistakes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kpr_model.keypoints import COCO_KEYPOINTS, KEYPOINT_INDEX, NUM_KEYPOINTS
from workers.errors import AnnotationError
from workers.json_input import finite_number, float_array, read_json

MAX_NEGATIVES = 100
_CLICK_KEYS = {"positive", "negative"}


def _skeleton(value: Any, what: str) -> np.ndarray:
    return float_array(value, (NUM_KEYPOINTS, 3), f"{what}: 17 COCO keypoints as [x, y, confidence]")


def _list(value: Any, what: str) -> list:
    """``value`` as a list (None: empty), refusing other types and more than MAX_NEGATIVES entries."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise AnnotationError(f"{what} must be a list")
    if len(value) > MAX_NEGATIVES:
        raise AnnotationError(f"{what}: at most {MAX_NEGATIVES} entries, got {len(value)}")
    return value


def _coordinate(point: dict, axis: str, what: str) -> float:
    """The finite number ``point[axis]``."""
    return finite_number(point.get(axis), f"{what}: {axis}")


def _joint(value: Any, what: str) -> int:
    """A COCO joint given by name ("left_ankle") or index (0..16)."""
    if isinstance(value, str) and value in KEYPOINT_INDEX:
        return KEYPOINT_INDEX[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < NUM_KEYPOINTS:
        return value
    raise AnnotationError(f"{what}: joint must be a COCO keypoint name ({', '.join(COCO_KEYPOINTS)}) or 0..16, got {value!r}")


def _point(item: Any, what: str) -> tuple[float, float]:
    """(x, y) of a clicked point ``{"x": .., "y": ..}``."""
    if not isinstance(item, dict):
        raise AnnotationError(f"{what} must be an object with x and y")
    return _coordinate(item, "x", what), _coordinate(item, "y", what)


def _clicks(data: dict, what: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Clicked points: ``{"positive": [{"joint", "x", "y"}, ...], "negative": [{"x", "y"}, ...]}``."""
    unknown = sorted(set(data) - _CLICK_KEYS)
    if unknown:
        raise AnnotationError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; expected positive and negative")
    positive = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    clicked = _list(data.get("positive"), f"{what}: positive")
    for n, item in enumerate(clicked, 1):
        place = f"{what}: positive point {n}"
        joint = _joint(item.get("joint") if isinstance(item, dict) else None, place)
        if positive[joint, 2] > 0:
            raise AnnotationError(f"{place}: joint {COCO_KEYPOINTS[joint]} is given twice")
        positive[joint] = (*_point(item, place), 1.0)
    negatives = _list(data.get("negative"), f"{what}: negative")
    negative = np.zeros((len(negatives), NUM_KEYPOINTS, 3), np.float32)
    for n, item in enumerate(negatives):
        negative[n, 0] = (*_point(item, f"{what}: negative point {n + 1}"), 1.0)
    return (positive if clicked else None), negative


def prompt_from_json(data: Any, what: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Positive keypoints [17, 3] (None: no target prompt) and negative skeletons [M, 17, 3] from parsed JSON.

    Accepted forms, all in crop pixels: a bare ``[[x, y, c] x 17]`` list (the target only);
    ``{"keypoints": [...], "negative_keypoints": [[...], ...]}``; the ReID-dataset form
    ``[{"keypoints": [...], "is_target": bool}, ...]`` with exactly one target; or clicked points
    ``{"positive": [{"joint": "left_ankle" | 0..16, "x": .., "y": ..}], "negative": [{"x": .., "y": ..}]}``
    (a clicked joint gets confidence 1; each negative point becomes a one-keypoint skeleton).
    ``what`` names the input in error messages.
    """
    if isinstance(data, dict) and "keypoints" not in data:
        return _clicks(data, what)
    negatives: list = []
    if isinstance(data, dict):
        positive = _skeleton(data.get("keypoints"), what)
        negatives = _list(data.get("negative_keypoints"), f"{what}: negative_keypoints")
    elif isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        targets = [d for d in data if d.get("is_target")]
        if len(targets) != 1:
            raise AnnotationError(f"{what}: expected exactly one skeleton with is_target=true, found {len(targets)}")
        positive = _skeleton(targets[0].get("keypoints"), what)
        negatives = _list([d.get("keypoints") for d in data if not d.get("is_target")], f"{what}: negative skeletons")
    else:
        positive = _skeleton(data, what)
    negative = np.stack([_skeleton(n, f"{what} (negative)") for n in negatives]) if negatives else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
    return positive, negative


def check_inside(positive: np.ndarray | None, negative: np.ndarray, width: int, height: int, what: str) -> None:
    """Refuse (AnnotationError) a keypoint with confidence > 0 outside the ``width`` x ``height`` crop."""
    named = [(COCO_KEYPOINTS[j], kp) for j, kp in enumerate(positive)] if positive is not None else []
    named += [(f"negative {n + 1}", kp) for n, skeleton in enumerate(negative) for kp in skeleton]
    for name, (x, y, conf) in named:
        if conf > 0 and not (0 <= x < width and 0 <= y < height):
            raise AnnotationError(f"{what}: {name} at ({x:g}, {y:g}) lies outside the {width}x{height} image")


def read_prompt_file(path: str | Path) -> tuple[np.ndarray | None, np.ndarray]:
    """Positive [17, 3] (or None) and negative [M, 17, 3] keypoints from a JSON prompt file (forms: prompt_from_json)."""
    path = Path(path)
    return prompt_from_json(read_json(path, f"keypoints file not found: {path}"), str(path))
