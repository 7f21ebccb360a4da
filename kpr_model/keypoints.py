"""COCO-17 keypoints and the groupings that turn them into prompt channels and body parts.

Prompt groupings (spec section 1, official ``coco_keypoints_transforms.py``):
- cck8: head, left_arm, right_arm, torso, left_leg, right_leg, left_foot, right_foot
- cck6: head, left_arm, right_arm, left_leg, right_leg, torso
The "eight" target part grouping (the K = 8 parts of the Occluded-Duke SOLIDER config) has the same
names, order and keypoints as cck8. A group's heatmap is the max of its keypoints' heatmaps.

``SIDECAR_FORMAT`` names the project's own annotation file (people with COCO-17 keypoints per frame):
the synthetic world writes it and ingestion reads it, so both take the name from here.
"""
from __future__ import annotations

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS = len(COCO_KEYPOINTS)
KEYPOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
SIDECAR_FORMAT = "kpr-sidecar-v1"

_HEAD = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
_TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")

_CCK8: dict[str, tuple[str, ...]] = {
    "head": _HEAD,
    "left_arm": ("left_shoulder", "left_elbow", "left_wrist"),
    "right_arm": ("right_shoulder", "right_elbow", "right_wrist"),
    "torso": _TORSO,
    "left_leg": ("left_knee", "left_ankle"),
    "right_leg": ("right_knee", "right_ankle"),
    "left_foot": ("left_ankle",),
    "right_foot": ("right_ankle",),
}

_CCK6: dict[str, tuple[str, ...]] = {
    "head": _HEAD,
    "left_arm": ("left_elbow", "left_wrist"),
    "right_arm": ("right_elbow", "right_wrist"),
    "left_leg": ("left_knee", "left_ankle"),
    "right_leg": ("right_knee", "right_ankle"),
    "torso": _TORSO,
}

PROMPT_GROUPINGS: dict[str, dict[str, tuple[str, ...]]] = {"cck8": _CCK8, "cck6": _CCK6}
PART_GROUPINGS: dict[str, dict[str, tuple[str, ...]]] = {"eight": _CCK8}


def group_names(grouping: str) -> tuple[str, ...]:
    """Ordered group names of a prompt grouping ("cck8", "cck6") or part grouping ("eight")."""
    return tuple(_lookup(grouping))


def group_keypoint_indices(grouping: str) -> tuple[tuple[int, ...], ...]:
    """COCO keypoint indices of each group, in group order."""
    return tuple(tuple(KEYPOINT_INDEX[k] for k in kps) for kps in _lookup(grouping).values())


def _lookup(grouping: str) -> dict[str, tuple[str, ...]]:
    table = PROMPT_GROUPINGS.get(grouping) or PART_GROUPINGS.get(grouping)
    if table is None:
        raise ValueError(f"unknown grouping {grouping!r}; known: {sorted(PROMPT_GROUPINGS) + sorted(PART_GROUPINGS)}")
    return table
