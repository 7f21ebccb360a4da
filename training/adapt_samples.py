"""An archive's crops as adaptation samples: one ``.npz`` file that the pipeline writes and every trainer reads.

The file holds arrays only (read without pickle): ``images`` [N, H, W, 3] uint8 RGB crops at the model's
input size, ``keypoints`` [N, 17, 3] in those pixels, ``labels`` [N] 0-based pseudo-identities, ``cameras``
[N] camera indices and, when a teacher embedded them, ``teacher`` [N, Dt] L2-normalised embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kpr_model.config import KPRConfig
from training.keypoint_masks import keypoint_part_confidences
from training.samples import LoadedSample

MASK_STRIDE = 4
"""Part pseudo-masks are drawn at 1/MASK_STRIDE of the input size (the part classifier's features are coarser)."""


@dataclass
class ArchiveSamples:
    """The adaptation samples of an archive (see the module docstring for the arrays)."""

    images: np.ndarray
    keypoints: np.ndarray
    labels: np.ndarray
    cameras: np.ndarray
    teacher: np.ndarray | None = None

    @property
    def num_identities(self) -> int:
        return len(np.unique(self.labels))

    def save(self, path: str | Path) -> None:
        arrays = {"images": self.images, "keypoints": self.keypoints, "labels": self.labels, "cameras": self.cameras}
        np.savez(path, **arrays, **({} if self.teacher is None else {"teacher": self.teacher}))

    @classmethod
    def load(cls, path: str | Path) -> "ArchiveSamples":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["images"], data["keypoints"], data["labels"], data["cameras"],
                       data["teacher"] if "teacher" in data else None)

    def loaded(self, config: KPRConfig, part_masks: bool) -> list[LoadedSample]:
        """The samples as the training loop takes them, with keypoint part pseudo-masks when ``part_masks``."""
        height, width = (max(1, side // MASK_STRIDE) for side in self.images.shape[1:3])
        scale = np.array([width / self.images.shape[2], height / self.images.shape[1], 1.0], np.float32)
        no_negatives = np.zeros((0, 17, 3), np.float32)
        return [LoadedSample(image, keypoints, no_negatives,
                             keypoint_part_confidences(keypoints * scale, height, width, config.part_grouping)
                             if part_masks else None, int(label), int(camera))
                for image, keypoints, label, camera in zip(self.images, self.keypoints, self.labels, self.cameras)]
