"""What every dataset reader shares: the sample record, the error type, keypoint files and path checks."""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "query", "gallery")
DEFAULT_KP_DIR = "pifpaf_keypoints_pifpaf_maskrcnn_filtering"
DEFAULT_MASKS_DIR = "pifpaf_maskrcnn_filtering"


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


def no_negatives() -> np.ndarray:
    """An empty [0, 17, 3] negative-keypoints array."""
    return np.zeros((0, 17, 3), np.float32)


def _skeleton(raw: Any, path: Path) -> np.ndarray:
    """The finite [17, 3] keypoints of one skeleton object of a keypoints file."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # too large for float32 becomes inf, refused below
            array = np.asarray(raw["keypoints"], dtype=np.float32).reshape(17, 3)
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError):
        raise DatasetError(f"{path}: a skeleton needs 'keypoints' with 17 [x, y, c] values") from None
    if not np.all(np.isfinite(array)):
        raise DatasetError(f"{path}: keypoints must be finite numbers")
    return array


def read_keypoints_file(path: Path) -> tuple[np.ndarray | None, np.ndarray]:
    """Target keypoints [17, 3] (None if the file lists nobody) and negative keypoints [M, 17, 3].

    A file is a list of skeletons ``{"keypoints": 17 x [x, y, c] or 51 numbers, "is_target": bool}``;
    a single object counts as the target; without ``is_target`` the first skeleton is the target (KPR's rule).
    """
    try:
        skeletons = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
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
    return target, np.stack(negatives) if negatives else no_negatives()


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else DatasetError "<what> not found: <path>"."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else DatasetError "<what> not found: <path>"."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    return path


def annotation_folder(root: Path, sub: str | Path, what: str, without: str) -> Path | None:
    """``root / sub``, or None with a logged note when the dataset has no ``root`` folder at all.

    ``without`` says what reading the dataset without it means. A ``root`` that exists but lacks ``sub``
    (another annotation set, or an incomplete download) raises DatasetError naming the missing folder.
    """
    if not root.is_dir():
        log.warning("no %s under %s (expected %s): %s", what, root.parent, root / sub, without)
        return None
    return require_dir(root / sub, what)


NO_KEYPOINTS = "reading it without keypoint prompts (each crop gets the empty prompt)"
NO_MASKS = "reading it without part masks (training then skips the body-part attention loss)"


def dataset_root(root: str | Path, folder: str) -> Path:
    """The dataset folder: ``root/<folder>`` (the official name under a data root) if present, else ``root``."""
    base = require_dir(Path(root), "dataset root")
    return base / folder if (base / folder).is_dir() else base


def list_images(folder: Path, suffixes: Sequence[str], pattern: str = "*") -> list[Path]:
    """Images under ``folder`` matching ``pattern`` with one of ``suffixes``, sorted; DatasetError when none."""
    images = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in suffixes and p.is_file())
    if not images:
        raise DatasetError(f"no {'/'.join(suffixes)} images in {folder}")
    return images


def pid_prefix(image: Path) -> int:
    """Identity from a name such as ``001_03.tif`` (the number before the first '_'); DatasetError otherwise."""
    head = image.name.split("_", 1)[0]
    if "_" not in image.name or not head.isdigit():
        raise DatasetError(f"image name {image.name!r} ({image.parent}) is not '<pid>_<index>.<ext>'")
    return int(head)


def existing_annotations(expected: Sequence[Path], what: str) -> list[Path | None]:
    """Each expected annotation file, or None where it is absent.

    DatasetError when none of them exists (wrong folder or file naming), naming the first expected path.
    """
    found = [path if path.is_file() else None for path in expected]
    if expected and not any(found):
        raise DatasetError(f"no {what} for these images; expected files such as {expected[0]}")
    return found


def annotations_beside(images: Sequence[Path], suffix: str, what: str, without: str) -> list[Path | None]:
    """Per image, its ``<image><suffix>`` file beside it (None where absent); all None, with a logged
    note (``without`` says what that means), when no image has one."""
    expected = [Path(f"{image}{suffix}") for image in images]
    if expected and not any(path.is_file() for path in expected):
        log.warning("no %s beside the images in %s (such as %s): %s", what, expected[0].parent, expected[0].name,
                    without)
        return [None] * len(expected)
    return existing_annotations(expected, what)


def build_samples(images: Sequence[Path], pids: Sequence[int], camids: Sequence[int],
                  keypoint_files: Sequence[Path | None], mask_files: Sequence[Path | None]) -> list[ReIDSample]:
    """Samples from per-image identity, camera and annotation files (keypoints read now, masks by path)."""
    samples = []
    for image, pid, camid, keypoints_file, mask in zip(images, pids, camids, keypoint_files, mask_files, strict=True):
        keypoints, negatives = read_keypoints_file(keypoints_file) if keypoints_file else (None, no_negatives())
        samples.append(ReIDSample(image, pid, camid, keypoints, negatives, mask))
    return samples


def external_annotations(base: Path, folder: str, images: Sequence[Path], kp_dir: str | None, masks_dir: str | None,
                         masks_suffix: str) -> tuple[list[Path | None], list[Path | None]]:
    """Per image, its KPR annotation files (None where absent, or for all when the folder name is None).

    Keypoints: ``<base>/external_annotation/<kp_dir>/<folder>/<image name>_keypoints.json``; masks:
    ``<base>/masks/<masks_dir>/<folder>/<image stem><masks_suffix>``. A dataset without any
    ``external_annotation/`` (or ``masks/``) folder is read without keypoints (or masks), with a logged
    note; a missing annotation folder under it, or one holding none of these images' files, raises
    DatasetError naming it.
    """
    keypoint_files: list[Path | None] = [None] * len(images)
    mask_files: list[Path | None] = [None] * len(images)
    kp_folder = kp_dir and annotation_folder(base / "external_annotation", Path(kp_dir) / folder,
                                             "keypoints folder", NO_KEYPOINTS)
    if kp_folder:
        keypoint_files = existing_annotations([kp_folder / f"{i.name}_keypoints.json" for i in images],
                                              "keypoints files")
    mask_folder = masks_dir and annotation_folder(base / "masks", Path(masks_dir) / folder, "masks folder", NO_MASKS)
    if mask_folder:
        mask_files = existing_annotations([mask_folder / f"{i.stem}{masks_suffix}" for i in images], "mask files")
    return keypoint_files, mask_files


def relabel_pids(samples: Sequence[ReIDSample]) -> list[ReIDSample]:
    """Training identities renumbered 0..n-1 in increasing order of the original pid (torchreid's train relabel)."""
    labels = {pid: label for label, pid in enumerate(sorted({s.pid for s in samples}))}
    return [dataclasses.replace(s, pid=labels[s.pid]) for s in samples]
