"""Reading a user's keypoint prompt file for an image query."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import AnnotationError


def _skeleton(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise AnnotationError(f"{what}: keypoints must be numbers") from None
    if array.shape != (17, 3) or not np.all(np.isfinite(array)):
        raise AnnotationError(f"{what}: expected 17 COCO keypoints as [x, y, confidence], got shape {list(array.shape)}")
    return array


def read_prompt_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Positive [17, 3] and negative [M, 17, 3] keypoints from a JSON prompt file, in crop pixels.

    Accepted forms: a bare ``[[x, y, c] x 17]`` list (the target only); ``{"keypoints": [...],
    "negative_keypoints": [[...], ...]}``; or the ReID-dataset form ``[{"keypoints": [...],
    "is_target": bool}, ...]`` with exactly one target.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnnotationError(f"keypoints file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: not a readable JSON file ({exc})") from None
    negatives: list = []
    if isinstance(data, dict):
        positive = _skeleton(data.get("keypoints"), f"{path}")
        negatives = data.get("negative_keypoints") or []
        if not isinstance(negatives, list):
            raise AnnotationError(f"{path}: negative_keypoints must be a list of skeletons")
    elif isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        targets = [d for d in data if d.get("is_target")]
        if len(targets) != 1:
            raise AnnotationError(f"{path}: expected exactly one skeleton with is_target=true, found {len(targets)}")
        positive = _skeleton(targets[0].get("keypoints"), f"{path}")
        negatives = [d.get("keypoints") for d in data if not d.get("is_target")]
    else:
        positive = _skeleton(data, f"{path}")
    negative = np.stack([_skeleton(n, f"{path} (negative)") for n in negatives]) if negatives else np.zeros((0, 17, 3), np.float32)
    return positive, negative
