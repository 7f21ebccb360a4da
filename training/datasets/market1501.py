"""Market-1501-layout readers: Market-1501, Occluded-Duke and the synthetic world's crops.

Layout (KPR's, and what ``training.synthetic.export_reid_crops`` writes)::

    <root>/bounding_box_train/  query/  bounding_box_test/        images <pid>_c<cam>...jpg
    <root>/external_annotation/<kp_dir>/<split folder>/<image>.jpg_keypoints.json
    <root>/masks/<masks_dir>/<split folder>/<image stem><masks_suffix>   part masks (see ``part_masks``)

Market-1501 names look like ``0002_c1s1_000451_03.jpg`` (pid -1 = junk box, skipped; pid 0 =
distractor, kept), Occluded-Duke's like ``0001_c2_f0046182.jpg``. Cameras are 1-based in names,
0-based in samples.
"""
from __future__ import annotations

import re
from pathlib import Path

from training.datasets.common import (DEFAULT_KP_DIR, DEFAULT_MASKS_DIR, DatasetError, ReIDSample, build_samples,
                                      external_annotations, list_images, require_dir)
from training.synthetic.crops import ANNOTATION_NAME

SPLIT_FOLDERS: dict[str, str] = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME = re.compile(r"^(-?\d+)_c(\d+)")
JUNK_PID = -1


def parse_market_name(name: str) -> tuple[int, int]:
    """(pid, 1-based camera) from a Market-1501 image name such as ``0002_c1s1_000451_03.jpg``."""
    match = _NAME.match(name)
    if match is None:
        raise DatasetError(f"image name {name!r} is not Market-1501 style '<pid>_c<cam>...'")
    return int(match.group(1)), int(match.group(2))


def read_market_layout(root: str | Path, split: str, kp_dir: str | None = DEFAULT_KP_DIR,
                       masks_dir: str | None = DEFAULT_MASKS_DIR, masks_suffix: str = ".npy",
                       cameras: int | None = None) -> list[ReIDSample]:
    """Samples of one split ("train", "query", "gallery" or its folder name), sorted by file name, raw pids.

    ``kp_dir`` / ``masks_dir`` name the annotation sub-folders (None: no keypoints / masks; a dataset
    without any ``external_annotation/`` or ``masks/`` folder is read so too, with a logged note). A
    missing split folder (all three must exist) or annotation sub-folder, a malformed name or a camera
    outside 1..``cameras`` raises DatasetError naming it; an image without its own keypoints or mask file
    gets None there, but an annotation folder holding none of the split's files is an error (wrong naming).
    """
    base = require_dir(Path(root), "dataset root")
    missing = [name for name in SPLIT_FOLDERS.values() if not (base / name).is_dir()]
    if missing:
        raise DatasetError(f"incomplete ReID folder {base}: missing {', '.join(f'{m}/' for m in missing)}")
    folder = SPLIT_FOLDERS.get(split, split)
    if folder not in SPLIT_FOLDERS.values():
        raise DatasetError(f"unknown split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}")
    images, pids, camids = [], [], []
    for image in list_images(base / folder, (".jpg",)):
        pid, camera = parse_market_name(image.name)
        if cameras is not None and not 1 <= camera <= cameras:
            raise DatasetError(f"image {image}: camera c{camera} outside c1..c{cameras}")
        if pid != JUNK_PID:
            images.append(image)
            pids.append(pid)
            camids.append(camera - 1)
    keypoint_files, mask_files = external_annotations(base, folder, images, kp_dir, masks_dir, masks_suffix)
    return build_samples(images, pids, camids, keypoint_files, mask_files)


def read_market1501(root: str | Path, split: str, kp_dir: str | None = DEFAULT_KP_DIR,
                    masks_dir: str | None = DEFAULT_MASKS_DIR, masks_suffix: str = ".npy") -> list[ReIDSample]:
    """Market-1501 (6 cameras) with KPR's PifPaf keypoints and part masks by default."""
    return read_market_layout(root, split, kp_dir, masks_dir, masks_suffix, cameras=6)


def read_occluded_duke(root: str | Path, split: str, kp_dir: str | None = f"{DEFAULT_KP_DIR}_v3",
                       masks_dir: str | None = DEFAULT_MASKS_DIR,
                       masks_suffix: str = ".jpg.confidence_fields.npy") -> list[ReIDSample]:
    """Occluded-Duke (8 cameras); defaults are the annotation folders of KPR's Occluded-Duke config."""
    return read_market_layout(root, split, kp_dir, masks_dir, masks_suffix, cameras=8)


def read_reid_layout(root: str | Path, split: str, kp_dir: str | None = ANNOTATION_NAME,
                     masks_dir: str | None = ANNOTATION_NAME) -> list[ReIDSample]:
    """The synthetic world's crops (``export_reid_crops``): the Market layout with its own annotation folders."""
    return read_market_layout(root, split, kp_dir, masks_dir)
