"""Occluded-PoseTrack-ReID: person crops cut from PoseTrack21 videos, chosen by KPR's sampling files.

Layout (``PoseTrack21``)::

    images/{train,val}/<video>/<frame>.jpg                 PoseTrack21 frames
    posetrack_data/{train,val}/<video>.json                PoseTrack21 annotations: "images" (id, vid_id,
                                                           file_name relative to the root) and "annotations"
                                                           (id, image_id, person_id, bbox [l, t, w, h],
                                                           keypoints: 17 x (x, y, visibility) flat)
    occluded_posetrack_reid/{train,val}_dataset_sampling.json
        pandas' column layout {"id": {k: detection id}, "split": {k: "train" | "query" | "gallery" | "none"}}
    occluded_posetrack_reid/images/<set>/<vid_id>/<person_id>_<vid_id>_<image_id>.jpg   crops (cut on first read)
    occluded_posetrack_reid/masks/<set>/<vid_id>/<person_id>_<vid_id>_<image_id>.npy    part masks
        (the authors': PifPaf confidence fields [36, 96, 32] kept inside a SAM mask; see ``part_masks``)

Train samples come from the train set, query and gallery from the val set. A crop is the box clipped
to the frame, resized to exactly 128x384 when wider than 128 or taller than 384 (as KPR cuts them).
Keypoints come from the annotations (PoseTrack21's 17 joints, used as KPR does, in COCO-17 slots):
the target's own, and as negatives every other annotated person of the frame with a visible joint in
the box, all in crop pixels (joints outside the box zeroed). Camera = the video's index among the
set's sorted videos; the official protocol keeps same-video gallery matches (no camera filter).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.datasets.common import (NO_MASKS, DatasetError, ReIDSample, annotation_folder, existing_annotations,
                                      no_negatives, require_dir, require_file)

SETS: dict[str, str] = {"train": "train", "query": "val", "gallery": "val"}
REID_FOLDER = "occluded_posetrack_reid"
MAX_CROP_WH: tuple[int, int] = (128, 384)


@dataclass(frozen=True)
class Detection:
    """One annotated person box of a PoseTrack21 frame (frame pixels)."""

    det_id: int
    image_id: int
    person_id: int
    bbox: tuple[float, float, float, float]
    keypoints: np.ndarray


@dataclass(frozen=True)
class TrackingSet:
    """A PoseTrack21 split: frames (image id -> video id, frame path), detections by id and by frame."""

    frames: dict[int, tuple[str, Path]]
    detections: dict[int, Detection]
    by_image: dict[int, list[Detection]]

    @property
    def videos(self) -> list[str]:
        """Video ids, sorted: a video's index is its camera id."""
        return sorted({video for video, _ in self.frames.values()})


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None


def _detection(raw: dict, path: Path) -> Detection:
    try:
        keypoints = np.asarray(raw.get("keypoints") or np.zeros(51), np.float32).reshape(17, 3)
        bbox = tuple(float(v) for v in raw["bbox"])
        if len(bbox) != 4 or not np.all(np.isfinite(keypoints)):
            raise ValueError("bbox needs 4 numbers, keypoints finite numbers")
        return Detection(int(raw["id"]), int(raw["image_id"]), int(raw["person_id"]), bbox, keypoints)
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{path}: malformed annotation {raw.get('id', '?')} ({error})") from None


def load_tracking_set(base: Path, set_name: str) -> TrackingSet:
    """All frames and person boxes of ``posetrack_data/<set_name>/*.json``; DatasetError naming a bad file."""
    folder = require_dir(base / "posetrack_data" / set_name, "PoseTrack21 annotations folder")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DatasetError(f"no PoseTrack21 .json annotation files in {folder}")
    frames: dict[int, tuple[str, Path]] = {}
    detections: dict[int, Detection] = {}
    by_image: dict[int, list[Detection]] = {}
    for path in files:
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise DatasetError(f"{path}: not a PoseTrack21 annotation file (needs 'images' and 'annotations' lists)")
        try:
            frames.update({int(i["id"]): (str(i["vid_id"]), base / i["file_name"]) for i in data["images"]})
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"{path}: malformed image entry ({error!r})") from None
        for raw in data["annotations"]:
            if isinstance(raw, dict) and raw.get("bbox") is not None and raw.get("person_id") is not None:
                detection = _detection(raw, path)
                detections[detection.det_id] = detection
                by_image.setdefault(detection.image_id, []).append(detection)
    return TrackingSet(frames, detections, by_image)


def read_sampling(path: Path) -> dict[int, str]:
    """Detection id -> "train" / "query" / "gallery" / "none" from a ``*_dataset_sampling.json`` file."""
    data = _read_json(require_file(path, "dataset sampling file"))
    ids, splits = (data.get("id"), data.get("split")) if isinstance(data, dict) else (None, None)
    if not isinstance(ids, dict) or not isinstance(splits, dict) or ids.keys() != splits.keys():
        raise DatasetError(f"{path}: expected {{'id': {{...}}, 'split': {{...}}}} with the same keys")
    try:
        return {int(ids[key]): str(splits[key]) for key in ids}
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{path}: detection ids must be integers ({error})") from None


def crop_box(bbox: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) of a (l, t, w, h) box clipped to a width x height frame, at least 1 pixel."""
    left, top, w, h = bbox
    x0, y0 = min(max(int(left), 0), width - 1), min(max(int(top), 0), height - 1)
    return x0, y0, min(max(int(left + w), x0 + 1), width), min(max(int(top + h), y0 + 1), height)


def crop_size(box: tuple[int, int, int, int]) -> tuple[int, int]:
    """(width, height) of the saved crop: the box, or exactly 128x384 when it is wider or taller than that."""
    w, h = box[2] - box[0], box[3] - box[1]
    return MAX_CROP_WH if w > MAX_CROP_WH[0] or h > MAX_CROP_WH[1] else (w, h)


def keypoints_in_crop(keypoints: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """[..., 17, 3] frame keypoints in crop pixels; invisible joints and joints outside the box become zeros."""
    x0, y0, x1, y1 = box
    out = keypoints.astype(np.float32).copy()
    x, y, c = out[..., 0], out[..., 1], out[..., 2]
    keep = (c > 0) & (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    out[..., 0] = (x - x0) * size[0] / (x1 - x0)
    out[..., 1] = (y - y0) * size[1] / (y1 - y0)
    out[~keep] = 0.0
    return out


def _read_frame(path: Path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if pixels is None:
        raise DatasetError(f"PoseTrack21 frame missing or unreadable: {path}")
    return pixels


def _write_crop(pixels: np.ndarray, box: tuple[int, int, int, int], path: Path) -> None:
    x0, y0, x1, y1 = box
    crop = pixels[y0:y1, x0:x1]
    size = crop_size(box)
    if size != (x1 - x0, y1 - y0):
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(path), crop)
    except OSError:
        written = False
    if not written:
        raise DatasetError(f"cannot write crop {path}; pass crops_dir= a writable folder")


def _sample(detection: Detection, tracking: TrackingSet, crops: Path, mask_folder: Path | None,
            cameras: dict[str, int], frame_sizes: dict[str, tuple[int, int]]) -> ReIDSample:
    """One detection's sample, cutting its crop when absent; ``frame_sizes`` caches each video's frame size."""
    if detection.image_id not in tracking.frames:
        raise DatasetError(f"detection {detection.det_id} refers to image {detection.image_id}, "
                           "absent from the annotations")
    video, frame_path = tracking.frames[detection.image_id]
    name = f"{detection.person_id}_{video}_{detection.image_id}"
    crop_path = crops / video / f"{name}.jpg"
    pixels = None if crop_path.is_file() and video in frame_sizes else _read_frame(frame_path)
    if pixels is not None:
        frame_sizes[video] = (pixels.shape[1], pixels.shape[0])
    box = crop_box(detection.bbox, *frame_sizes[video])
    if pixels is not None and not crop_path.is_file():
        _write_crop(pixels, box, crop_path)
    size = crop_size(box)
    others = [d.keypoints for d in tracking.by_image[detection.image_id] if d is not detection]
    negatives = keypoints_in_crop(np.stack(others), box, size) if others else no_negatives()
    return ReIDSample(crop_path, detection.person_id, cameras[video], keypoints_in_crop(detection.keypoints, box, size),
                      negatives[negatives[..., 2].sum(axis=1) > 0],
                      mask_folder / video / f"{name}.npy" if mask_folder else None)


def read_occluded_posetrack(root: str | Path, split: str, masks: bool = True,
                            crops_dir: str | Path | None = None) -> list[ReIDSample]:
    """Samples of one split, sorted by detection id, with raw PoseTrack21 person ids.

    Missing crops are cut from the frames into ``crops_dir`` (default: the official
    ``occluded_posetrack_reid/images/<set>``). ``masks``: look up the part mask files (without any
    ``occluded_posetrack_reid/masks/`` folder the split is read without them, with a logged note). A
    missing folder, sampling file or frame, or a sampled detection absent from the annotations raises
    DatasetError naming it.
    """
    if split not in SETS:
        raise DatasetError(f"unknown split {split!r}; expected one of {list(SETS)}")
    base = require_dir(Path(root), "dataset root")
    set_name = SETS[split]
    reid = require_dir(base / REID_FOLDER, "Occluded-PoseTrack-ReID annotations folder")
    sampling_path = reid / f"{set_name}_dataset_sampling.json"
    chosen = sorted(det_id for det_id, label in read_sampling(sampling_path).items() if label == split)
    tracking = load_tracking_set(base, set_name)
    absent = [det_id for det_id in chosen if det_id not in tracking.detections]
    if absent:
        raise DatasetError(f"{len(absent)} detections chosen by {sampling_path} are missing from "
                           f"{base / 'posetrack_data' / set_name} (e.g. id {absent[0]})")
    if not chosen:
        raise DatasetError(f"{sampling_path} chooses no {split!r} detections")
    crops = Path(crops_dir) if crops_dir is not None else reid / "images" / set_name
    mask_folder = annotation_folder(reid / "masks", set_name, "masks folder", NO_MASKS) if masks else None
    cameras = {video: index for index, video in enumerate(tracking.videos)}
    frame_sizes: dict[str, tuple[int, int]] = {}
    samples = [_sample(tracking.detections[det_id], tracking, crops, mask_folder, cameras, frame_sizes)
               for det_id in chosen]
    if mask_folder is None:
        return samples
    found = existing_annotations([s.mask_path for s in samples], "mask files")
    return [dataclasses.replace(s, mask_path=mask) for s, mask in zip(samples, found)]
