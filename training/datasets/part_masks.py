"""Part mask files, told apart by shape: part-label maps or the KPR authors' PifPaf confidence fields.

- ``[h, w]`` integers: a part label per pixel (0 = background, 1..K = parts), as the synthetic world writes.
- ``[36, h, w]`` floats: PifPaf confidence fields (17 keypoint fields, then 19 connection fields), usually at
  a lower resolution than the crop, as published for Market-1501, Occluded-Duke and Occluded-PoseTrack-ReID.
  They are grouped into the K parts at their own resolution, each part the max of its fields clipped to
  [0, 1] (the official loader's first mask transform), giving ``[K, h, w]`` float32 part confidences.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kpr_model.keypoints import PIFPAF_FIELDS, pifpaf_field_indices
from training.datasets.common import DatasetError

BIPO_FOREGROUND = 0.2
"""Part confidence above which a pixel belongs to the occluding person that BIPO pastes (official threshold)."""


def group_pifpaf_fields(fields: np.ndarray, grouping: str) -> np.ndarray:
    """Part confidences [K, h, w] float32 from PifPaf fields [36, h, w]: per part, the max of its fields in [0, 1]."""
    parts = [fields[list(indices)].max(axis=0) for indices in pifpaf_field_indices(grouping)]
    return np.clip(np.stack(parts), 0, 1).astype(np.float32)


def read_part_mask(path: Path, grouping: str, num_parts: int) -> np.ndarray:
    """A mask file as part labels [h, w] (uint8, 0..``num_parts``) or part confidences [K, h, w] float32.

    DatasetError in one line for an unreadable file, another shape, a dtype that does not fit the shape,
    or labels above ``num_parts``.
    """
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read mask file {path}: {error}") from None
    if raw.ndim == 2 and raw.size and np.issubdtype(raw.dtype, np.integer):
        if raw.min() < 0 or raw.max() > num_parts:
            raise DatasetError(f"mask file {path}: part labels must lie in 0..{num_parts}, "
                               f"found {raw.min()}..{raw.max()}")
        return raw.astype(np.uint8)
    if raw.ndim == 3 and raw.shape[0] == len(PIFPAF_FIELDS) and raw.size and np.issubdtype(raw.dtype, np.floating):
        if not np.all(np.isfinite(raw)):
            raise DatasetError(f"mask file {path}: PifPaf confidence fields must be finite numbers")
        return group_pifpaf_fields(raw, grouping)
    raise DatasetError(f"mask file {path} holds {raw.dtype} {list(raw.shape)}; expected integer part labels "
                       f"[h, w] or float PifPaf confidence fields [{len(PIFPAF_FIELDS)}, h, w]")


def resized_confidences(parts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Part confidences [K, h, w] at height x width, resized bilinearly (OpenCV, as the official loader's resize)."""
    if parts.shape[1:] == (height, width):
        return parts
    channels_last = np.ascontiguousarray(parts.transpose(1, 2, 0))
    resized = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, len(parts)).transpose(2, 0, 1)


def is_part_confidences(mask: np.ndarray) -> bool:
    """Whether a loaded mask holds part confidences [K, h, w] (else part labels [h, w])."""
    return mask.ndim == 3


def foreground(mask: np.ndarray) -> np.ndarray:
    """Boolean [h, w]: where a loaded mask shows the person (a part label, or a part confidence above BIPO's)."""
    return mask.max(axis=0) > BIPO_FOREGROUND if is_part_confidences(mask) else mask > 0
