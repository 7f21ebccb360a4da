"""Third-party annotation formats read by the `annotations` backend: PoseTrack21 json, COCO json, MOT gt.txt.

Each parser returns ``{frame_index: [PersonDetection, ...]}`` with 0-based frame indices of the video.

- **COCO-style json** (COCO and PoseTrack21): ``{"images": [...], "annotations": [...], "categories": [...]}``.
  A frame index comes from the image's integer ``frame_index`` field when present, else from the digits
  of its ``file_name`` stem (``images/val/000342_mpii_test/000017.jpg`` -> 17), else from an integer
  ``frame_id`` field. (PoseTrack21's ``frame_id`` is a global id, which is why its file name wins.)
  Two images with the same frame index are refused. Annotations of a non-person category or with
  ``iscrowd`` are skipped; ``bbox`` is ``[x, y, w, h]``; ``keypoints`` a flat list of K x (x, y, v),
  placed onto COCO-17 by the names in the person category's ``keypoints`` (COCO order when absent;
  PoseTrack's head_bottom / head_top have no COCO counterpart and are dropped). Visibility: COCO
  ``v == 2`` is visible (1 = labelled but occluded, as in kpr-sidecar-v1); PoseTrack ``v > 0`` is visible.
  ``track_id`` (PoseTrack) becomes the detection's track id; ``score`` (detector results) its score.
- **MOT** ``gt.txt``: rows ``frame,id,x,y,w,h[,conf,class,visibility]`` with 1-based frames. Rows
  with ``conf == 0`` (MOT17 "ignore") or a class other than 1 (pedestrian; -1 = unspecified is
  kept) are skipped; id -1 means no identity. MOT files carry no keypoints.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from kpr_model.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS
from workers.detections import PersonDetection, no_keypoints
from workers.errors import AnnotationError
from workers.json_input import finite_number, float_array

POSETRACK21 = "posetrack21"
COCO = "coco"
MOT = "mot"
MOT_PEDESTRIAN = 1
_DIGITS = re.compile(r"(\d+)$")

Frames = dict[int, list[PersonDetection]]


def coco_style_format(data: Any) -> str | None:
    """POSETRACK21 or COCO when ``data`` is a COCO-style document (PoseTrack images carry a ``vid_id``), else None."""
    if not (isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list)):
        return None
    return POSETRACK21 if any(isinstance(i, dict) and "vid_id" in i for i in data["images"]) else COCO


def _index_field(image: dict, key: str) -> int | None:
    """``image[key]`` when it is a non-negative integer (not a bool), else None."""
    value = image.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _image_frame(image: Any, path: Path) -> int:
    """The frame index of one image entry (rule: module docstring)."""
    if not isinstance(image, dict):
        raise AnnotationError(f"{path}: every image must be an object")
    index = _index_field(image, "frame_index")
    if index is None and isinstance(image.get("file_name"), str):
        digits = _DIGITS.search(Path(image["file_name"]).stem)
        index = int(digits.group(1)) if digits else None
    index = _index_field(image, "frame_id") if index is None else index
    if index is None:
        raise AnnotationError(f"{path}: image {image.get('id')!r:.40} has no frame index "
                              "(needs frame_index, digits in its file_name, or frame_id)")
    return index


def _frames_of_images(data: dict, path: Path) -> dict[Any, int]:
    """image id -> frame index, refusing two images on one frame."""
    frames: dict[Any, int] = {}
    taken: dict[int, Any] = {}
    for image in data["images"]:
        index = _image_frame(image, path)
        image_id = image.get("id")
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise AnnotationError(f"{path}: image of frame {index} has no integer or string id")
        if index in taken and taken[index] != image_id:
            raise AnnotationError(f"{path}: images {taken[index]!r:.40} and {image_id!r:.40} both map to frame {index}")
        frames[image_id], taken[index] = index, image_id
    return frames


def _person_category(data: dict, path: Path) -> tuple[set | None, list | None]:
    """(ids of the person categories or None = every annotation is a person, their keypoint names or None)."""
    categories = data.get("categories")
    if categories is None:
        return None, None
    if not isinstance(categories, list):
        raise AnnotationError(f"{path}: categories must be a list")
    people = [c for c in categories if isinstance(c, dict) and c.get("name") == "person"]
    if not people:
        raise AnnotationError(f"{path}: no category named 'person' in categories")
    names = people[0].get("keypoints")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise AnnotationError(f"{path}: the person category's keypoints must be a list of names")
    return {c.get("id") for c in people}, names


def _keypoint_slots(names: list | None) -> np.ndarray:
    """For each keypoint of the file, its COCO-17 index, or -1 when COCO has no such joint."""
    if names is None:
        return np.arange(NUM_KEYPOINTS)
    return np.array([KEYPOINT_INDEX.get(name, -1) for name in names], dtype=np.int64)


def _keypoints(raw: Any, slots: np.ndarray, visible_from: int, where: str) -> np.ndarray:
    """A flat [x, y, v, ...] list as COCO-17 (x, y, conf) with conf 1 for ``v >= visible_from``; zeros when absent."""
    keypoints = no_keypoints()
    if raw is None or (isinstance(raw, list) and not raw):
        return keypoints
    values = float_array(raw, (3 * len(slots),), f"{where}: keypoints ({len(slots)} x [x, y, v] as one flat list)")
    values = values.reshape(len(slots), 3)
    known = slots >= 0
    keypoints[slots[known], :2] = values[known, :2]
    keypoints[slots[known], 2] = (values[known, 2] >= visible_from).astype(np.float32)
    return keypoints


def _track(value: Any, where: str) -> str | None:
    """A track id as text: integers and non-empty strings are accepted, None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise AnnotationError(f"{where}: track_id must be an integer or a string, got {value!r:.40}")
    return str(value)


def parse_coco_style(data: dict, path: Path, posetrack: bool) -> Frames:
    """People of a COCO or PoseTrack21 document per frame index (rules: module docstring)."""
    image_frames = _frames_of_images(data, path)
    person_ids, names = _person_category(data, path)
    slots = _keypoint_slots(names)
    frames: Frames = {index: [] for index in image_frames.values()}
    for n, raw in enumerate(data["annotations"]):
        where = f"{path} annotation {n}"
        if not isinstance(raw, dict):
            raise AnnotationError(f"{where}: not an object")
        if (person_ids is not None and raw.get("category_id") not in person_ids) or raw.get("iscrowd"):
            continue
        if raw.get("image_id") not in image_frames:
            raise AnnotationError(f"{where}: image_id {raw.get('image_id')!r:.40} is not among the images")
        bbox = float_array(raw.get("bbox"), (4,), f"{where}: bbox")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise AnnotationError(f"{where}: bbox width and height must be positive")
        keypoints = _keypoints(raw.get("keypoints"), slots, 1 if posetrack else 2, where)
        score = finite_number(raw.get("score", 1.0), f"{where}: score")
        frames[image_frames[raw["image_id"]]].append(
            PersonDetection(bbox, score, keypoints, _track(raw.get("track_id"), where)))
    return frames


def _mot_row(fields: list[str], where: str) -> np.ndarray:
    """The numbers of one MOT row (at least frame, id, x, y, w, h)."""
    if len(fields) < 6:
        raise AnnotationError(f"{where}: expected frame,id,x,y,w,h[,conf,class,visibility], got {len(fields)} fields")
    try:
        values = np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        raise AnnotationError(f"{where}: not a row of numbers") from None
    if not np.all(np.isfinite(values)):
        raise AnnotationError(f"{where}: numbers must be finite")
    if values[0] < 1 or values[0] != int(values[0]):
        raise AnnotationError(f"{where}: frame must be an integer >= 1 (MOT frames are 1-based), got {fields[0]}")
    if values[4] <= 0 or values[5] <= 0:
        raise AnnotationError(f"{where}: box width and height must be positive")
    return values


def parse_mot(path: Path) -> Frames:
    """People per 0-based frame index from a MOT ``gt.txt`` (rows kept: module docstring)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: not a readable MOT text file ({exc})") from None
    frames: Frames = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        values = _mot_row(line.replace(" ", "").split(","), f"{path} line {number}")
        if (len(values) > 6 and values[6] == 0) or (len(values) > 7 and values[7] not in (MOT_PEDESTRIAN, -1)):
            continue
        track = None if values[1] < 0 else str(int(values[1]))
        detection = PersonDetection(values[2:6].astype(np.float32), 1.0, no_keypoints(), track)
        frames.setdefault(int(values[0]) - 1, []).append(detection)
    return frames
