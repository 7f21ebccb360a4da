"""ReID dataset readers: Market-1501, Occluded-Duke, Occluded-ReID, Partial-ReID, Occluded-PoseTrack-ReID, synthetic.

``load_dataset(name, root, split)`` returns a split's ``ReIDSample`` list; ``root`` is the dataset
folder or a data root holding it under its official folder name. Train pids are relabelled 0..n-1.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from training.datasets.common import SPLITS, DatasetError, ReIDSample, dataset_root, relabel_pids
from training.datasets.market1501 import read_market1501, read_occluded_duke, read_reid_layout
from training.datasets.occluded_partial import read_occluded_reid, read_partial_reid
from training.datasets.posetrack import read_occluded_posetrack


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its reader, official folder name, the splits it has, and whether evaluation drops
    same-identity same-camera gallery matches (the Market-1501 rule)."""

    reader: Callable[..., list[ReIDSample]]
    folder: str
    splits: tuple[str, ...] = SPLITS
    drop_same_camera: bool = True

    @property
    def options(self) -> list[str]:
        """The keyword options the reader takes beyond (root, split)."""
        return list(inspect.signature(self.reader).parameters)[2:]


DATASETS: dict[str, DatasetSpec] = {
    "market1501": DatasetSpec(read_market1501, "Market-1501-v15.09.15"),
    "occluded_duke": DatasetSpec(read_occluded_duke, "Occluded_Duke"),
    "occluded_reid": DatasetSpec(read_occluded_reid, "Occluded_REID", ("query", "gallery")),
    "partial_reid": DatasetSpec(read_partial_reid, "Partial_REID", ("query", "gallery")),
    "occ_posetrack21": DatasetSpec(read_occluded_posetrack, "PoseTrack21", drop_same_camera=False),
    "synthetic": DatasetSpec(read_reid_layout, "synthetic"),
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a dataset name (case-insensitive); DatasetError listing the known names otherwise."""
    spec = DATASETS.get(name.lower())
    if spec is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return spec


def load_dataset(name: str, root: str | Path, split: str, **options: Any) -> list[ReIDSample]:
    """Samples of ``split`` of dataset ``name`` under ``root``; ``options`` go to its reader (see ``DATASETS``)."""
    spec = dataset_spec(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise DatasetError(f"dataset {name!r} takes no option {', '.join(unknown)} "
                           f"(options: {', '.join(spec.options)})")
    samples = spec.reader(dataset_root(root, spec.folder), split, **options)
    return relabel_pids(samples) if split == "train" else samples


__all__ = ["DATASETS", "DatasetError", "DatasetSpec", "ReIDSample", "dataset_spec", "load_dataset"]
