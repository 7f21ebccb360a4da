"""ReID samples held in memory and turned into model batches (images, prompts, part targets)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from kpr_model.config import KPRConfig
from kpr_model.encoder import prepare_crops
from training.datasets import DatasetError, ReIDSample
from training.datasets.part_masks import is_part_confidences, read_part_mask, resized_confidences

PART_THRESHOLD = 0.5
"""A pixel is background where no part confidence reaches this (official ``mask_filtering_threshold``)."""
PART_SOFTMAX_WEIGHT = 15.0
"""Temperature of the softmax over background + parts (official ``masks.softmax_weight``)."""


@dataclass
class LoadedSample:
    """A ReID sample with its pixels (RGB) and part mask (labels [h, w] or part confidences [K, h, w]) loaded."""

    image: np.ndarray
    keypoints: np.ndarray
    negatives: np.ndarray
    mask: np.ndarray | None
    pid: int
    camid: int

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        return self.image, self.keypoints, self.negatives, self.mask


def load_samples(samples: Sequence[ReIDSample], parts: KPRConfig | None = None) -> list[LoadedSample]:
    """Read every image once, and every part mask grouped into ``parts``' K parts (None: masks are not read).

    A missing or unreadable file, a mask of another shape, or a split mixing part-label and PifPaf-field
    masks raises DatasetError naming the file.
    """
    loaded: list[LoadedSample] = []
    first_mask: np.ndarray | None = None
    for s in samples:
        pixels = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DatasetError(f"cannot read image {s.image_path}")
        keypoints = s.keypoints if s.keypoints is not None else np.zeros((17, 3), np.float32)
        mask = None
        if parts is not None and s.mask_path is not None:
            mask = read_part_mask(s.mask_path, parts.part_grouping, parts.num_parts)
            first_mask = mask if first_mask is None else first_mask
            if is_part_confidences(mask) != is_part_confidences(first_mask):
                raise DatasetError(f"mask file {s.mask_path} is of another kind than the split's first mask "
                                   "(part labels [h, w] and PifPaf fields [36, h, w] cannot be mixed)")
        loaded.append(LoadedSample(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), keypoints, s.negative_keypoints,
                                   mask, s.pid, s.camid))
    return loaded


def part_probabilities(parts: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Background + part probabilities [K + 1, H, W] from part confidences [K, h, w], as the official loader forms them.

    Bilinear resize to ``size`` (H, W), background = 1 where no part reaches ``PART_THRESHOLD`` (else 0), then
    a softmax over the K + 1 channels with weight ``PART_SOFTMAX_WEIGHT``.
    """
    maps = torch.from_numpy(np.ascontiguousarray(resized_confidences(parts, *size)))
    background = (maps.max(dim=0).values < PART_THRESHOLD).to(maps.dtype)
    return torch.softmax(torch.cat([background[None], maps]) * PART_SOFTMAX_WEIGHT, dim=0)


def make_batch(items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
               config: KPRConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Model inputs from (image, keypoints, negatives, mask) tuples: images, prompts and part targets.

    Part targets at the input size: labels [N, H, W] (int64) from part-label masks, or background + part
    probabilities [N, K + 1, H, W] (``part_probabilities``) from part confidences; the attention loss takes
    either. None unless every item has a mask (the attention loss is then skipped).
    """
    images, prompts = prepare_crops([i[0] for i in items], [i[1] for i in items], [i[2] for i in items], config)
    masks = [i[3] for i in items]
    if any(m is None for m in masks):
        return images, prompts, None
    if is_part_confidences(masks[0]):
        return images, prompts, torch.stack([part_probabilities(m, config.image_size) for m in masks])
    height, width = config.image_size
    labels = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in masks])
    return images, prompts, torch.from_numpy(labels.astype(np.int64))
