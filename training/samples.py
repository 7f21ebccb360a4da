"""ReID samples held in memory and turned into model batches (images, prompts, part labels)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from kpr_model.config import KPRConfig
from kpr_model.encoder import prepare_crops
from training.datasets import DatasetError, ReIDSample


@dataclass
class LoadedSample:
    """A ReID sample with its pixels (RGB) and part-label mask loaded."""

    image: np.ndarray
    keypoints: np.ndarray
    negatives: np.ndarray
    mask: np.ndarray | None
    pid: int
    camid: int

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        return self.image, self.keypoints, self.negatives, self.mask


def load_samples(samples: Sequence[ReIDSample]) -> list[LoadedSample]:
    """Read every image (and mask) once; a missing or unreadable file raises DatasetError naming it."""
    loaded = []
    for s in samples:
        pixels = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DatasetError(f"cannot read image {s.image_path}")
        keypoints = s.keypoints if s.keypoints is not None else np.zeros((17, 3), np.float32)
        mask = np.load(s.mask_path, allow_pickle=False) if s.mask_path is not None else None
        loaded.append(LoadedSample(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), keypoints, s.negative_keypoints,
                                   mask, s.pid, s.camid))
    return loaded


def make_batch(items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
               config: KPRConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Model inputs from (image, keypoints, negatives, mask) tuples: images, prompts and part labels [N, H, W].

    Part labels are None unless every item has a mask (the attention loss is then skipped).
    """
    images, prompts = prepare_crops([i[0] for i in items], [i[1] for i in items], [i[2] for i in items], config)
    masks = [i[3] for i in items]
    if any(m is None for m in masks):
        return images, prompts, None
    height, width = config.image_size
    labels = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in masks])
    return images, prompts, torch.from_numpy(labels.astype(np.int64))
