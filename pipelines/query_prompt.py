"""Keypoint prompts of image queries, parsed from JSON (a prompt file or a web form field) into the encoder's shape.

One parser serves every accepted form, so `kpr search` and the web app accept and refuse the same prompts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kpr_model.keypoints import COCO_KEYPOINTS, KEYPOINT_INDEX, NUM_KEYPOINTS
from pipelines.errors import UserError
from workers.errors import AnnotationError
from workers.json_input import finite_number, float_array, read_json

MAX_NEGATIVES = 100
_CLICK_KEYS = {"positive", "negative"}


@dataclass(frozen=True)
class KeypointPrompt:
    """A keypoint prompt in crop pixels, as the encoder takes it: the target's skeleton and those of people in the way.

    ``positive`` [17, 3] is None when only negatives are given; ``negative`` [M, 17, 3] may be empty;
    ``source`` names the prompt (a file, a form field) in error messages.
    """

    positive: np.ndarray | None
    negative: np.ndarray
    source: str

    @property
    def target_points(self) -> int:
        """How many target keypoints are given (confidence > 0)."""
        return 0 if self.positive is None else int((self.positive[:, 2] > 0).sum())

    @property
    def occluder_points(self) -> int:
        """How many keypoints of people in the way are given (confidence > 0)."""
        return int((self.negative[..., 2] > 0).sum())

    def check_inside(self, width: int, height: int) -> None:
        """Refuse a keypoint with confidence > 0 outside the ``width`` x ``height`` crop."""
        named = [(COCO_KEYPOINTS[j], kp) for j, kp in enumerate(self.positive)] if self.positive is not None else []
        named += [(f"negative {n + 1}", kp) for n, skeleton in enumerate(self.negative) for kp in skeleton]
        for name, (x, y, conf) in named:
            if conf > 0 and not (0 <= x < width and 0 <= y < height):
                raise UserError(f"{self.source}: {name} at ({x:g}, {y:g}) lies outside the {width}x{height} image")


def read_prompt(path: str | Path) -> KeypointPrompt:
    """The keypoint prompt of a JSON file (forms: prompt_from_json)."""
    path = Path(path)
    try:
        data = read_json(path, f"keypoints file not found: {path}")
    except AnnotationError as exc:
        raise UserError(str(exc)) from None
    return prompt_from_json(data, str(path))


def prompt_from_text(text: str, source: str = "keypoints") -> KeypointPrompt:
    """The keypoint prompt of JSON text (forms: prompt_from_json), saying where the JSON broke."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise UserError(f"{source}: JSON nested too deeply") from None
    return prompt_from_json(data, source)


def prompt_from_json(data: Any, source: str) -> KeypointPrompt:
    """The keypoint prompt of parsed JSON, in crop pixels; UserError naming ``source`` for anything else.

    Accepted forms: a bare ``[[x, y, c] x 17]`` list (the target only);
    ``{"keypoints": [...], "negative_keypoints": [[...], ...]}``; the ReID-dataset form
    ``[{"keypoints": [...], "is_target": bool}, ...]`` with exactly one target; or clicked points
    ``{"positive": [{"joint": "left_ankle" | 0..16, "x": .., "y": ..}], "negative": [{"x": .., "y": ..}]}``
    (a clicked joint gets confidence 1; each negative point becomes a one-keypoint skeleton).
    """
    try:
        positive, negative = _parse(data, source)
    except AnnotationError as exc:  # the JSON number and array checks
        raise UserError(str(exc)) from None
    return KeypointPrompt(positive, negative, source)


def _parse(data: Any, what: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Positive keypoints [17, 3] (or None) and negative skeletons [M, 17, 3] of any accepted form."""
    if isinstance(data, dict) and "keypoints" not in data:
        return _clicks(data, what)
    negatives: list = []
    if isinstance(data, dict):
        positive = _skeleton(data.get("keypoints"), what)
        negatives = _list(data.get("negative_keypoints"), f"{what}: negative_keypoints")
    elif isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        targets = [d for d in data if d.get("is_target")]
        if len(targets) != 1:
            raise UserError(f"{what}: expected exactly one skeleton with is_target=true, found {len(targets)}")
        positive = _skeleton(targets[0].get("keypoints"), what)
        negatives = _list([d.get("keypoints") for d in data if not d.get("is_target")], f"{what}: negative skeletons")
    else:
        positive = _skeleton(data, what)
    negative = (np.stack([_skeleton(n, f"{what} (negative)") for n in negatives]) if negatives
                else np.zeros((0, NUM_KEYPOINTS, 3), np.float32))
    return positive, negative


def _skeleton(value: Any, what: str) -> np.ndarray:
    return float_array(value, (NUM_KEYPOINTS, 3), f"{what}: 17 COCO keypoints as [x, y, confidence]")


def _list(value: Any, what: str) -> list:
    """``value`` as a list (None: empty), refusing other types and more than MAX_NEGATIVES entries."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserError(f"{what} must be a list")
    if len(value) > MAX_NEGATIVES:
        raise UserError(f"{what}: at most {MAX_NEGATIVES} entries, got {len(value)}")
    return value


def _joint(value: Any, what: str) -> int:
    """A COCO joint given by name ("left_ankle") or index (0..16)."""
    if isinstance(value, str) and value in KEYPOINT_INDEX:
        return KEYPOINT_INDEX[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < NUM_KEYPOINTS:
        return value
    raise UserError(f"{what}: joint must be a COCO keypoint name ({', '.join(COCO_KEYPOINTS)}) or 0..16, got {value!r}")


def _point(item: Any, what: str) -> tuple[float, float]:
    """(x, y) of a clicked point ``{"x": .., "y": ..}``."""
    if not isinstance(item, dict):
        raise UserError(f"{what} must be an object with x and y")
    return finite_number(item.get("x"), f"{what}: x"), finite_number(item.get("y"), f"{what}: y")


def _clicks(data: dict, what: str) -> tuple[np.ndarray | None, np.ndarray]:
    """Clicked points: ``{"positive": [{"joint", "x", "y"}, ...], "negative": [{"x", "y"}, ...]}``."""
    unknown = sorted(set(data) - _CLICK_KEYS)
    if unknown:
        raise UserError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; expected positive and negative")
    positive = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    clicked = _list(data.get("positive"), f"{what}: positive")
    for n, item in enumerate(clicked, 1):
        place = f"{what}: positive point {n}"
        joint = _joint(item.get("joint") if isinstance(item, dict) else None, place)
        if positive[joint, 2] > 0:
            raise UserError(f"{place}: joint {COCO_KEYPOINTS[joint]} is given twice")
        positive[joint] = (*_point(item, place), 1.0)
    negatives = _list(data.get("negative"), f"{what}: negative")
    negative = np.zeros((len(negatives), NUM_KEYPOINTS, 3), np.float32)
    for n, item in enumerate(negatives):
        negative[n, 0] = (*_point(item, f"{what}: negative point {n + 1}"), 1.0)
    return (positive if clicked else None), negative
