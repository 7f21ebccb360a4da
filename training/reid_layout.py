"""The synthetic world's Market-1501-style ReID folders (readers now live in ``training.datasets``).

Kept for its callers: ``read_reid_layout`` (the Market layout with the ``synthetic`` annotation
folders), ``DatasetError``, ``ReIDSample``, ``read_keypoints_file``, ``parse_market_name``, and the
torch dataset ``ReIDImageDataset`` over samples.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch.utils.data

from training.datasets.common import DatasetError, ReIDSample, read_keypoints_file
from training.datasets.market1501 import SPLIT_FOLDERS, parse_market_name, read_reid_layout

__all__ = ["DatasetError", "ReIDImageDataset", "ReIDSample", "SPLIT_FOLDERS", "parse_market_name",
           "read_keypoints_file", "read_reid_layout"]


class ReIDImageDataset(torch.utils.data.Dataset):
    """Torch dataset over ReID samples: RGB uint8 image, keypoints, negatives, mask, pid, camid (no resizing).

    With ``relabel`` (training), pids are remapped to 0..n-1 in sorted order; ``pid_map`` holds the mapping.
    Missing target keypoints come back as zeros (confidence 0 = no prompt).
    """

    def __init__(self, samples: list[ReIDSample], relabel: bool = False) -> None:
        self.samples = samples
        pids = sorted({s.pid for s in samples})
        self.pid_map = {pid: i for i, pid in enumerate(pids)} if relabel else {pid: pid for pid in pids}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        pixels = cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DatasetError(f"cannot read image {sample.image_path}")
        keypoints = sample.keypoints if sample.keypoints is not None else np.zeros((17, 3), np.float32)
        mask = np.load(sample.mask_path, allow_pickle=False) if sample.mask_path is not None else None
        return {"image": cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), "keypoints": keypoints,
                "negative_keypoints": sample.negative_keypoints, "mask": mask, "pid": self.pid_map[sample.pid],
                "camid": sample.camid, "image_path": str(sample.image_path)}
