"""Reader of Market-1501-style ReID folders with KPR's external keypoints and part masks.

Layout (the one KPR reads, and the one ``training.synthetic.export_reid_crops`` writes)::

    <root>/bounding_box_train/  query/  bounding_box_test/        images {pid}_c{cam}s{seq}_{frame}_{k}.jpg
    <root>/external_annotation/<kp_dir>/<split folder>/<image>.jpg_keypoints.json
    <root>/masks/<masks_dir>/<split folder>/<image>.npy

A keypoints file is a list of skeletons ``{"keypoints": 17 x [x, y, c] (or 51 flat numbers),
"is_target": bool}`` (a single object counts as the target; without ``is_target`` the first
skeleton is the target, as in KPR). Images with pid -1 (Market's junk boxes) are skipped.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.utils.data

SPLIT_FOLDERS: dict[str, str] = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class DatasetError(ValueError):
    """A ReID folder is missing, incomplete or malformed; the message names what is wrong."""


@dataclass(frozen=True)
class ReIDSample:
    """One ReID image: path, identity, 0-based camera, target / negative keypoints (crop pixels), mask path."""

    image_path: Path
    pid: int
    camid: int
    keypoints: np.ndarray | None
    negative_keypoints: np.ndarray
    mask_path: Path | None


def parse_market_name(name: str) -> tuple[int, int]:
    """(pid, 1-based camera) from a Market-1501 image name such as ``0002_c1s1_000451_03.jpg``."""
    match = _NAME.match(name)
    if match is None:
        raise DatasetError(f"image name {name!r} is not Market-1501 style '<pid>_c<cam>...'")
    return int(match.group(1)), int(match.group(2))


def _skeleton(raw: Any, path: Path) -> np.ndarray:
    try:
        array = np.asarray(raw["keypoints"], dtype=np.float32).reshape(17, 3)
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{path}: a skeleton needs 'keypoints' with 17 [x, y, c] values") from None
    if not np.all(np.isfinite(array)):
        raise DatasetError(f"{path}: keypoints must be finite numbers")
    return array


def read_keypoints_file(path: Path) -> tuple[np.ndarray | None, np.ndarray]:
    """Target keypoints [17, 3] (None if the file lists nobody) and negative keypoints [M, 17, 3]."""
    try:
        skeletons = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read keypoints file {path}: {error}") from None
    if isinstance(skeletons, dict):
        skeletons = [{**skeletons, "is_target": True}]
    if not isinstance(skeletons, list):
        raise DatasetError(f"{path}: expected a list of skeletons")
    flags = [bool(s.get("is_target", i == 0)) if isinstance(s, dict) else False for i, s in enumerate(skeletons)]
    if skeletons and sum(flags) != 1:
        raise DatasetError(f"{path}: expected exactly one skeleton with is_target, found {sum(flags)}")
    target = next((_skeleton(s, path) for s, flag in zip(skeletons, flags) if flag), None)
    negatives = [_skeleton(s, path) for s, flag in zip(skeletons, flags) if not flag]
    return target, np.stack(negatives) if negatives else np.zeros((0, 17, 3), np.float32)


def _require(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path}")


def read_reid_layout(root: str | Path, split: str, kp_dir: str | None = "synthetic",
                     masks_dir: str | None = "synthetic") -> list[ReIDSample]:
    """Samples of one split ("train", "query", "gallery" or a folder name), sorted by file name.

    ``kp_dir`` / ``masks_dir`` name the annotation sub-folders (None: no keypoints / masks). A
    missing split folder (all three must exist) or annotation folder raises DatasetError naming it;
    an image without its own keypoints or mask file gets None there.
    """
    base = Path(root)
    _require(base, "dataset root")
    missing = [name for name in SPLIT_FOLDERS.values() if not (base / name).is_dir()]
    if missing:
        raise DatasetError(f"incomplete ReID folder {base}: missing {', '.join(f'{m}/' for m in missing)}")
    folder = SPLIT_FOLDERS.get(split, split)
    if folder not in SPLIT_FOLDERS.values():
        raise DatasetError(f"unknown split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}")
    keypoint_folder = base / "external_annotation" / kp_dir / folder if kp_dir else None
    mask_folder = base / "masks" / masks_dir / folder if masks_dir else None
    if keypoint_folder is not None:
        _require(keypoint_folder, "keypoints folder")
    if mask_folder is not None:
        _require(mask_folder, "masks folder")
    images = sorted((base / folder).glob("*.jpg"))
    if not images:
        raise DatasetError(f"no .jpg images in {base / folder}")
    samples = []
    for image in images:
        pid, camera = parse_market_name(image.name)
        if pid == -1:
            continue
        keypoints, negatives = None, np.zeros((0, 17, 3), np.float32)
        if keypoint_folder is not None and (keypoint_folder / f"{image.name}_keypoints.json").is_file():
            keypoints, negatives = read_keypoints_file(keypoint_folder / f"{image.name}_keypoints.json")
        mask = mask_folder / f"{image.stem}.npy" if mask_folder is not None else None
        samples.append(ReIDSample(image, pid, camera - 1, keypoints, negatives,
                                  mask if mask is not None and mask.is_file() else None))
    return samples


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
