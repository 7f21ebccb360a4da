"""Exports ReID training/evaluation crops of a synthetic world in the Market-1501 layout KPR reads.

``<out>/bounding_box_train/`` holds the training identities; a disjoint set of identities is split
into ``query/`` (one crop per identity and camera) and ``bounding_box_test/`` (the gallery). Images
are named ``{pid:04d}_c{cam}s1_{frame:06d}_{k:02d}.jpg``. Beside them, per image:
``external_annotation/synthetic/<split>/<image>.jpg_keypoints.json``: every skeleton in the crop,
``{"keypoints": [[x, y, c] x 17] (crop pixels, c = 1 visible else 0), "is_target": bool}``,
exactly one target, the others become negative prompts; and ``masks/synthetic/<split>/<image>.npy``:
uint8 [h, w] "eight" part labels (1..8) of the target's visible pixels, 0 elsewhere.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from training.synthetic.config import WorldConfig
from training.synthetic.render import CameraRenderer, PersonInFrame, RenderedFrame
from training.synthetic.skeleton import PART_TO_EIGHT
from training.synthetic.world import build_world

TRAIN_DIR, QUERY_DIR, GALLERY_DIR = "bounding_box_train", "query", "bounding_box_test"
SPLIT_DIRS: tuple[str, ...] = (TRAIN_DIR, QUERY_DIR, GALLERY_DIR)
ANNOTATION_NAME = "synthetic"
_SPLIT_STREAM = 4


@dataclass(frozen=True)
class CropExport:
    """What ``export_reid_crops`` wrote: root folder, images per split folder, identities on each side."""

    root: Path
    counts: dict[str, int]
    train_identities: tuple[str, ...]
    test_identities: tuple[str, ...]


def _paths(root: Path, split: str, name: str) -> tuple[Path, Path, Path]:
    return (root / split / f"{name}.jpg",
            root / "external_annotation" / ANNOTATION_NAME / split / f"{name}.jpg_keypoints.json",
            root / "masks" / ANNOTATION_NAME / split / f"{name}.npy")


def crop_box(bbox: tuple[int, int, int, int], margin: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Crop (x0, y0, x1, y1) around a person box, padded by ``margin`` x box height on every side, clipped."""
    x, y, w, h = bbox
    pad = int(round(margin * h))
    return max(0, x - pad), max(0, y - pad), min(size[0], x + w + pad), min(size[1], y + h + pad)


def crop_keypoints(keypoints: np.ndarray, box: tuple[int, int, int, int]) -> list[list[float]]:
    """17 [x, y, c] in crop pixels; c = 1.0 where the keypoint is visible and inside the crop, else 0.0."""
    x0, y0, x1, y1 = box
    result = []
    for x, y, v in keypoints:
        inside = x0 <= x < x1 and y0 <= y < y1
        result.append([round(float(x) - x0, 2), round(float(y) - y0, 2), 1.0 if v == 2 and inside else 0.0])
    return result


def _crop_meets_bbox(box: tuple[int, int, int, int], bbox: tuple[int, int, int, int]) -> bool:
    """Whether a crop (x0, y0, x1, y1) and a person box (x, y, w, h) overlap."""
    return box[0] < bbox[0] + bbox[2] and bbox[0] < box[2] and box[1] < bbox[1] + bbox[3] and bbox[1] < box[3]


def _write_sample(root: Path, split: str, name: str, frame: RenderedFrame, person: PersonInFrame, margin: float,
                  jpeg_quality: int) -> None:
    height, width = frame.image.shape[:2]
    box = crop_box(person.bbox, margin, (width, height))
    x0, y0, x1, y1 = box
    image_path, keypoints_path, mask_path = _paths(root, split, name)
    cv2.imwrite(str(image_path), frame.image[y0:y1, x0:x1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    skeletons = [{"keypoints": crop_keypoints(person.keypoints, box), "is_target": True}]
    for other in frame.persons:
        if other is not person and _crop_meets_bbox(box, other.bbox):
            keypoints = crop_keypoints(other.keypoints, box)
            if any(c > 0 for _, _, c in keypoints):
                skeletons.append({"keypoints": keypoints, "is_target": False})
    keypoints_path.write_text(json.dumps(skeletons, separators=(",", ":")))
    own = frame.owner[y0:y1, x0:x1] == person.slot
    np.save(mask_path, np.where(own, PART_TO_EIGHT[frame.part[y0:y1, x0:x1]], 0).astype(np.uint8))


def _choose_queries(gallery: list[tuple[int, int, str]], rng: np.random.Generator) -> list[str]:
    """One crop per (identity, camera) holding at least two, for identities seen by at least two cameras."""
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for pid, camera, name in gallery:
        groups[(pid, camera)].append(name)
    cameras_of: dict[int, set[int]] = defaultdict(set)
    for pid, camera in groups:
        cameras_of[pid].add(camera)
    return [names[rng.integers(len(names))] for (pid, _), names in sorted(groups.items())
            if len(names) >= 2 and len(cameras_of[pid]) >= 2]


def export_reid_crops(out_dir: str | Path, config: WorldConfig, frame_stride: int = 5, margin: float = 0.1,
                      train_fraction: float = 0.5, jpeg_quality: int = 95) -> CropExport:
    """Render every ``frame_stride``-th frame of each camera and export its target people as ReID crops.

    Identities are split at random (seeded) into train and test; test crops become gallery, and one
    per (identity, camera) becomes a query. Previous exports under ``out_dir`` are replaced.
    """
    if frame_stride < 1 or not 0 < train_fraction < 1 or config.n_identities < 2:
        raise ValueError("need frame_stride >= 1, train_fraction in (0, 1) and at least 2 identities")
    world = build_world(config)
    rng = np.random.default_rng([config.seed, _SPLIT_STREAM])
    n = len(world.identities)
    n_train = min(n - 1, max(1, int(round(n * train_fraction))))
    train = {world.identities[int(i)].pid for i in rng.permutation(n)[:n_train]}
    root = Path(out_dir)
    for owned in (*SPLIT_DIRS, f"external_annotation/{ANNOTATION_NAME}", f"masks/{ANNOTATION_NAME}"):
        shutil.rmtree(root / owned, ignore_errors=True)
    for split in SPLIT_DIRS:
        for path in _paths(root, split, "x"):
            path.parent.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(SPLIT_DIRS, 0)
    gallery: list[tuple[int, int, str]] = []
    for camera in world.cameras:
        renderer = CameraRenderer(world, camera.index)
        for index in range(0, config.num_frames, frame_stride):
            frame = renderer.render(index)
            for k, person in enumerate(frame.persons):
                if not person.target:
                    continue
                pid = person.identity.pid
                name = f"{pid:04d}_c{camera.index + 1}s1_{index:06d}_{k:02d}"
                split = TRAIN_DIR if pid in train else GALLERY_DIR
                _write_sample(root, split, name, frame, person, margin, jpeg_quality)
                counts[split] += 1
                if split == GALLERY_DIR:
                    gallery.append((pid, camera.index, name))
    for name in _choose_queries(gallery, rng):
        for source, destination in zip(_paths(root, GALLERY_DIR, name), _paths(root, QUERY_DIR, name)):
            os.replace(source, destination)
        counts[GALLERY_DIR] -= 1
        counts[QUERY_DIR] += 1
    export = CropExport(root, counts, tuple(i.name for i in world.identities if i.pid in train),
                        tuple(i.name for i in world.identities if i.pid not in train))
    (root / "splits.json").write_text(json.dumps({"config": config.to_dict(), "counts": counts,
                                                  "train_identities": export.train_identities,
                                                  "test_identities": export.test_identities}, indent=1) + "\n")
    return export
