"""Reading a user's keypoint prompt file for an image query."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import AnnotationError
from workers.json_input import float_array, read_json


def _skeleton(value: Any, what: str) -> np.ndarray:
    return float_array(value, (17, 3), f"{what}: 17 COCO keypoints as [x, y, confidence]")


def read_prompt_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Positive [17, 3] and negative [M, 17, 3] keypoints from a JSON prompt file, in crop pixels.

    Accepted forms: a bare ``[[x, y, c] x 17]`` list (the target only); ``{"keypoints": [...],
    "negative_keypoints": [[...], ...]}``; or the ReID-dataset form ``[{"keypoints": [...],
    "is_target": bool}, ...]`` with exactly one target.
    """
    path = Path(path)
    data = read_json(path, f"keypoints file not found: {path}")
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
