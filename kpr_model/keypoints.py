"""COCO-17 keypoints and the groupings that turn them into prompt channels and body parts.

Prompt groupings (spec section 1, official ``coco_keypoints_transforms.py``):
- cck8: head, left_arm, right_arm, torso, left_leg, right_leg, left_foot, right_foot
- cck6: head, left_arm, right_arm, left_leg, right_leg, torso
A group's heatmap is the max of its keypoints' heatmaps.

Target part groupings (the K parts of ``masks.preprocess``):
- eight (K = 8, Occluded-Duke and Occluded-PoseTrack SOLIDER configs): the names, order and keypoints of cck8
- five_v (K = 5, Market-1501, Occluded-ReID and Partial-ReID SOLIDER configs, the official default):
  head, upper_arms_torso, lower_arms_torso, legs, feet; its keypoints are the keypoint fields of its
  PifPaf table below (the official code defines five_v by that table only)

The human-parsing masks the KPR authors publish are PifPaf confidence fields: 17 keypoint fields then
19 connection fields (``PIFPAF_FIELDS``), grouped into the K parts by ``PIFPAF_PART_FIELDS`` (official
``pifpaf_mask_transform.py``: ``CombinePifPafIntoEightBodyMasks``, ``CombinePifPafIntoFiveVerticalParts``;
a part takes the max of its fields).

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

PIFPAF_CONNECTIONS: tuple[str, ...] = (
    "left_ankle_to_left_knee",
    "left_knee_to_left_hip",
    "right_ankle_to_right_knee",
    "right_knee_to_right_hip",
    "left_hip_to_right_hip",
    "left_shoulder_to_left_hip",
    "right_shoulder_to_right_hip",
    "left_shoulder_to_right_shoulder",
    "left_shoulder_to_left_elbow",
    "right_shoulder_to_right_elbow",
    "left_elbow_to_left_wrist",
    "right_elbow_to_right_wrist",
    "left_eye_to_right_eye",
    "nose_to_left_eye",
    "nose_to_right_eye",
    "left_eye_to_left_ear",
    "right_eye_to_right_ear",
    "left_ear_to_left_shoulder",
    "right_ear_to_right_shoulder",
)
PIFPAF_FIELDS: tuple[str, ...] = COCO_KEYPOINTS + PIFPAF_CONNECTIONS

PIFPAF_PART_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "eight": {
        "head": _HEAD + ("left_eye_to_right_eye", "nose_to_left_eye", "nose_to_right_eye", "left_eye_to_left_ear",
                         "right_eye_to_right_ear", "left_ear_to_left_shoulder", "right_ear_to_right_shoulder"),
        "left_arm": ("left_shoulder", "left_elbow", "left_wrist", "left_shoulder_to_left_elbow",
                     "left_elbow_to_left_wrist"),
        "right_arm": ("right_shoulder", "right_elbow", "right_wrist", "right_shoulder_to_right_elbow",
                      "right_elbow_to_right_wrist"),
        "torso": ("left_hip", "right_hip", "left_hip_to_right_hip", "left_shoulder_to_left_hip",
                  "right_shoulder_to_right_hip", "left_shoulder_to_right_shoulder"),
        "left_leg": ("left_knee", "left_ankle_to_left_knee", "left_knee_to_left_hip", "left_hip_to_right_hip"),
        "right_leg": ("right_knee", "right_ankle_to_right_knee", "right_knee_to_right_hip"),
        "left_foot": ("left_ankle",),
        "right_foot": ("right_ankle",),
    },
    "five_v": {
        "head": _HEAD + ("left_eye_to_right_eye", "nose_to_left_eye", "nose_to_right_eye", "left_eye_to_left_ear",
                         "right_eye_to_right_ear", "left_ear_to_left_shoulder", "right_ear_to_right_shoulder"),
        "upper_arms_torso": ("left_elbow", "right_elbow", "left_shoulder_to_left_elbow",
                             "right_shoulder_to_right_elbow", "left_shoulder", "right_shoulder",
                             "left_shoulder_to_right_shoulder"),
        "lower_arms_torso": ("left_wrist", "right_wrist", "left_elbow_to_left_wrist", "right_elbow_to_right_wrist",
                             "left_hip", "right_hip", "right_shoulder_to_right_hip"),
        "legs": ("left_hip", "right_hip", "left_knee", "right_knee", "left_ankle_to_left_knee", "left_knee_to_left_hip",
                 "right_ankle_to_right_knee", "right_knee_to_right_hip"),
        "feet": ("left_ankle", "right_ankle"),
    },
}
PART_GROUPINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "eight": _CCK8,
    "five_v": {part: tuple(f for f in fields if f in KEYPOINT_INDEX)
               for part, fields in PIFPAF_PART_FIELDS["five_v"].items()},
}


def group_names(grouping: str) -> tuple[str, ...]:
    """Ordered group names of a prompt grouping ("cck8", "cck6") or part grouping ("eight", "five_v")."""
    return tuple(_lookup(grouping))


def part_grouping_of(num_parts: int) -> str | None:
    """The part grouping with ``num_parts`` parts (each K has at most one), None when there is none."""
    return next((name for name, parts in PART_GROUPINGS.items() if len(parts) == num_parts), None)


def group_keypoint_indices(grouping: str) -> tuple[tuple[int, ...], ...]:
    """COCO keypoint indices of each group, in group order."""
    return tuple(tuple(KEYPOINT_INDEX[k] for k in kps) for kps in _lookup(grouping).values())


def pifpaf_field_indices(grouping: str) -> tuple[tuple[int, ...], ...]:
    """Indices into ``PIFPAF_FIELDS`` of each part of a part grouping, in the grouping's part order."""
    table = PIFPAF_PART_FIELDS.get(grouping)
    if table is None:
        raise ValueError(f"no PifPaf field grouping {grouping!r}; known: {sorted(PIFPAF_PART_FIELDS)}")
    return tuple(tuple(PIFPAF_FIELDS.index(f) for f in fields) for fields in table.values())


def _lookup(grouping: str) -> dict[str, tuple[str, ...]]:
    table = PROMPT_GROUPINGS.get(grouping) or PART_GROUPINGS.get(grouping)
    if table is None:
        raise ValueError(f"unknown grouping {grouping!r}; known: {sorted(PROMPT_GROUPINGS) + sorted(PART_GROUPINGS)}")
    return table
