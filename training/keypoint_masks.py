"""Part pseudo-masks from detected keypoints, for crops that have no human-parsing masks (an archive's own crops).

The keypoints draw PifPaf-like confidence fields (a disc per confident keypoint, a thick segment per
connection of two confident keypoints, the torso quadrilateral filled), which are then grouped into the
model's K parts exactly as the authors' PifPaf masks are (``group_pifpaf_fields``). A part whose keypoints
are not confidently seen gets no pixel, which is what teaches the part classifier visibility on real crops.
"""
from __future__ import annotations

import cv2
import numpy as np

from kpr_model.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS, PIFPAF_CONNECTIONS, PIFPAF_FIELDS
from training.datasets.part_masks import group_pifpaf_fields

MIN_KEYPOINT_CONFIDENCE = 0.3
"""Keypoints less confident than this draw nothing (MoveNet's usual threshold)."""
DISC_RADIUS = 0.05
LIMB_THICKNESS = 0.09
"""Disc radius and segment thickness as a share of the mask height (a person spans the crop's height)."""
SEGMENT_CONFIDENCE = 0.8
"""Segments and the torso are drawn less confident than keypoint discs, so that a disc wins where they overlap: a
part made of discs alone (the feet: an ankle disc at the end of the thick ankle-to-knee segment of the legs) would
otherwise tie with the part drawn over it everywhere, lose every tie to the earlier part, and never be taught visible.
Above PART_THRESHOLD (0.5), so segments are still parts and not background."""
_TORSO = ("left_shoulder", "right_shoulder", "right_hip", "left_hip")
_TORSO_FIELDS = ("left_shoulder_to_left_hip", "right_shoulder_to_right_hip")


def keypoint_part_confidences(keypoints: np.ndarray, height: int, width: int, grouping: str,
                              min_confidence: float = MIN_KEYPOINT_CONFIDENCE) -> np.ndarray:
    """Part confidences [K, height, width] float32 from keypoints [17, 3] in the mask's pixels: 1 on keypoint discs,
    SEGMENT_CONFIDENCE on connection segments and the torso, 0 elsewhere."""
    seen = keypoints[:, 2] >= min_confidence
    points = np.round(keypoints[:, :2]).astype(np.int32)
    radius = max(1, round(DISC_RADIUS * height))
    thickness = max(1, round(LIMB_THICKNESS * height))
    fields = np.zeros((len(PIFPAF_FIELDS), height, width), np.float32)
    for index in np.flatnonzero(seen):
        cv2.circle(fields[index], tuple(int(v) for v in points[index]), radius, 1.0, -1)
    for offset, name in enumerate(PIFPAF_CONNECTIONS):
        first, second = (KEYPOINT_INDEX[k] for k in _connection_ends(name))
        if seen[first] and seen[second]:
            cv2.line(fields[NUM_KEYPOINTS + offset], tuple(int(v) for v in points[first]),
                     tuple(int(v) for v in points[second]), SEGMENT_CONFIDENCE, thickness)
    torso = [KEYPOINT_INDEX[k] for k in _TORSO]
    if seen[torso].all():
        for name in _TORSO_FIELDS:
            cv2.fillPoly(fields[PIFPAF_FIELDS.index(name)], [points[torso]], SEGMENT_CONFIDENCE)
    return group_pifpaf_fields(fields, grouping)


def _connection_ends(name: str) -> tuple[str, str]:
    """The two keypoint names a PifPaf connection field joins ("left_knee_to_left_hip" -> left_knee, left_hip)."""
    first, _, second = name.partition("_to_")
    return first, second
