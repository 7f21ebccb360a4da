"""Occluded-ReID and Partial-ReID: test-only sets of occluded / partial query images against whole-body ones.

Occluded-ReID (``Occluded_REID``)::

    occluded_body_images/<pid>/<pid>_<k>.tif   (query, camera 0)
    whole_body_images/<pid>/<pid>_<k>.tif      (gallery, camera 1)
    external_annotation/<kp_dir>/<images folder>/<image>.tif_keypoints.json
    masks/<masks_dir>/<images folder>/<image stem><masks_suffix>

Partial-ReID (``Partial_REID``): flat ``partial_body_images/`` (``occluded_body_images/`` in KPR's
copy) and ``whole_body_images/`` of ``<pid>_<k>.jpg``, each image with PifPaf's
``<image>.predictions.json`` (first skeleton = target) and ``<image>.confidence_fields.npy`` beside it.
Each query and gallery image gets a fixed camera (0 / 1), as the official code does, so the
Market-1501 same-camera rule removes nothing. Both are evaluated after training on Market-1501.
"""
from __future__ import annotations

from pathlib import Path

from training.datasets.common import (DEFAULT_KP_DIR, DEFAULT_MASKS_DIR, NO_KEYPOINTS, NO_MASKS, DatasetError,
                                      ReIDSample, annotations_beside, build_samples, external_annotations,
                                      list_images, pid_prefix, require_dir)

CAMIDS: dict[str, int] = {"query": 0, "gallery": 1}
OCCLUDED_FOLDERS: dict[str, str] = {"query": "occluded_body_images", "gallery": "whole_body_images"}
PARTIAL_QUERY_FOLDERS: tuple[str, ...] = ("partial_body_images", "occluded_body_images")
PARTIAL_GALLERY_FOLDER = "whole_body_images"


def _check_test_split(split: str, dataset: str) -> None:
    if split not in CAMIDS:
        raise DatasetError(f"{dataset} has no {split!r} split: it is a test set (query, gallery); "
                           "KPR trains on Market-1501 for it")


def read_occluded_reid(root: str | Path, split: str, kp_dir: str | None = DEFAULT_KP_DIR,
                       masks_dir: str | None = DEFAULT_MASKS_DIR, masks_suffix: str = ".npy") -> list[ReIDSample]:
    """Occluded-ReID query (occluded) or gallery (whole body) samples, sorted by path."""
    _check_test_split(split, "Occluded-ReID")
    base = require_dir(Path(root), "dataset root")
    folder = OCCLUDED_FOLDERS[split]
    images = list_images(require_dir(base / folder, f"{split} folder"), (".tif",), "*/*")
    pids = [pid_prefix(image) for image in images]
    keypoint_files, mask_files = external_annotations(base, folder, images, kp_dir, masks_dir, masks_suffix)
    return build_samples(images, pids, [CAMIDS[split]] * len(images), keypoint_files, mask_files)


def _partial_folder(base: Path, split: str) -> Path:
    if split == "gallery":
        return require_dir(base / PARTIAL_GALLERY_FOLDER, "gallery folder")
    for name in PARTIAL_QUERY_FOLDERS:
        if (base / name).is_dir():
            return base / name
    raise DatasetError(f"query folder not found: {base / PARTIAL_QUERY_FOLDERS[0]} (or {PARTIAL_QUERY_FOLDERS[1]}/)")


def read_partial_reid(root: str | Path, split: str, keypoints: bool = True, masks: bool = True) -> list[ReIDSample]:
    """Partial-ReID query (partial body) or gallery (whole body) samples, sorted by file name.

    ``keypoints`` / ``masks``: read the PifPaf files beside each image (without any, the split is read
    without them, with a logged note).
    """
    _check_test_split(split, "Partial-ReID")
    images = list_images(_partial_folder(require_dir(Path(root), "dataset root"), split), (".jpg",))
    none: list[Path | None] = [None] * len(images)
    keypoint_files = (annotations_beside(images, ".predictions.json", "keypoints files", NO_KEYPOINTS)
                      if keypoints else none)
    mask_files = annotations_beside(images, ".confidence_fields.npy", "mask files", NO_MASKS) if masks else none
    return build_samples(images, [pid_prefix(i) for i in images], [CAMIDS[split]] * len(images),
                         keypoint_files, mask_files)
