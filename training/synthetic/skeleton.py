"""Body-part vocabulary of the synthetic people: drawn parts, the "eight" grouping and keypoint ownership.

Each drawn piece of a body carries a fine ``Part`` label. The exported part masks use the "eight"
grouping of ``kpr_model.keypoints`` (head, left arm, right arm, torso, left leg, right leg, left
foot, right foot -> labels 1..8). A keypoint counts as visible only where the final render shows
one of the parts that keypoint sits on (``KEYPOINT_PARTS``), so a hand hidden behind its own
torso is occluded just like a hand hidden behind a pillar.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np

from kpr_model.keypoints import COCO_KEYPOINTS, NUM_KEYPOINTS, group_names

EIGHT_PARTS: tuple[str, ...] = group_names("eight")


class Part(IntEnum):
    """Fine label of a drawn body piece (0 = not this body)."""

    NONE = 0
    HEAD = 1
    L_UPPER_ARM = 2
    L_FOREARM = 3
    L_HAND = 4
    R_UPPER_ARM = 5
    R_FOREARM = 6
    R_HAND = 7
    TORSO = 8
    L_THIGH = 9
    L_SHIN = 10
    L_FOOT = 11
    R_THIGH = 12
    R_SHIN = 13
    R_FOOT = 14


_EIGHT_OF_PART: dict[Part, str] = {
    Part.HEAD: "head",
    Part.L_UPPER_ARM: "left_arm", Part.L_FOREARM: "left_arm", Part.L_HAND: "left_arm",
    Part.R_UPPER_ARM: "right_arm", Part.R_FOREARM: "right_arm", Part.R_HAND: "right_arm",
    Part.TORSO: "torso",
    Part.L_THIGH: "left_leg", Part.L_SHIN: "left_leg", Part.L_FOOT: "left_foot",
    Part.R_THIGH: "right_leg", Part.R_SHIN: "right_leg", Part.R_FOOT: "right_foot",
}

PART_TO_EIGHT: np.ndarray = np.array(
    [0] + [EIGHT_PARTS.index(_EIGHT_OF_PART[p]) + 1 for p in Part if p != Part.NONE], np.uint8)
"""Lookup table: fine ``Part`` label -> "eight" label (1..8, 0 = none)."""

_HEAD_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
HEAD_KEYPOINT_INDICES: tuple[int, ...] = tuple(COCO_KEYPOINTS.index(k) for k in _HEAD_KEYPOINTS)

_JOINT_PARTS: dict[str, tuple[str, ...]] = {
    "shoulder": ("UPPER_ARM",), "elbow": ("UPPER_ARM", "FOREARM"), "wrist": ("FOREARM", "HAND"),
    "hip": ("THIGH",), "knee": ("THIGH", "SHIN"), "ankle": ("SHIN", "FOOT"),
}


def _keypoint_parts(name: str) -> tuple[Part, ...]:
    if name in _HEAD_KEYPOINTS:
        return (Part.HEAD,)
    side, joint = name.split("_")
    return tuple(Part[f"{side[0].upper()}_{piece}"] for piece in _JOINT_PARTS[joint])


KEYPOINT_PARTS: tuple[tuple[Part, ...], ...] = tuple(_keypoint_parts(k) for k in COCO_KEYPOINTS)
"""Parts each COCO keypoint lies on; shoulders and hips also lie on the torso when on its near side."""

TORSO_JOINT_INDICES: tuple[int, ...] = tuple(
    COCO_KEYPOINTS.index(k) for k in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))

__all__ = ["COCO_KEYPOINTS", "EIGHT_PARTS", "HEAD_KEYPOINT_INDICES", "KEYPOINT_PARTS", "NUM_KEYPOINTS",
           "PART_TO_EIGHT", "Part", "TORSO_JOINT_INDICES"]
