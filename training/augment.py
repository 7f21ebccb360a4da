"""Joint augmentation of a ReID sample: image, target/negative keypoints and part-label mask move together."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpr_model.keypoints import COCO_KEYPOINTS, group_names


def _twin(name: str) -> str:
    """The mirror-image name: left_x <-> right_x, others unchanged."""
    if name.startswith("left_"):
        return "right_" + name[len("left_"):]
    if name.startswith("right_"):
        return "left_" + name[len("right_"):]
    return name


def _mirror_index(names: tuple[str, ...]) -> np.ndarray:
    """Index map that swaps every left_* entry with its right_* twin."""
    return np.array([names.index(_twin(n)) for n in names])


KEYPOINT_MIRROR = _mirror_index(COCO_KEYPOINTS)
PART_LABEL_MIRROR = np.concatenate([[0], 1 + _mirror_index(group_names("eight"))])


@dataclass
class AugmentConfig:
    """Probabilities and ranges; defaults follow the spec's prompt dropout (drop all p 0.3, random 0.5)."""

    flip_p: float = 0.5
    crop_scale: tuple[float, float] = (0.85, 1.0)
    brightness: float = 0.3
    channel_gain: float = 0.1
    drop_all_keypoints_p: float = 0.3
    drop_random_keypoints_p: float = 0.5
    drop_random_keypoints_ratio: float = 0.5


def augment(image: np.ndarray, keypoints: np.ndarray, negatives: np.ndarray, mask: np.ndarray | None,
            rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One random augmentation of (image HxWx3 uint8, keypoints [17,3], negatives [M,17,3], mask HxW or None)."""
    h, w = image.shape[:2]
    keypoints, negatives = keypoints.copy(), negatives.copy()
    scale = rng.uniform(*cfg.crop_scale)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = image[y0:y0 + ch, x0:x0 + cw]
    mask = None if mask is None else mask[y0:y0 + ch, x0:x0 + cw]
    for kps in (keypoints, *negatives):
        kps[:, 0] -= x0
        kps[:, 1] -= y0
        outside = (kps[:, 0] < 0) | (kps[:, 0] >= cw) | (kps[:, 1] < 0) | (kps[:, 1] >= ch)
        kps[outside, 2] = 0.0
    if rng.random() < cfg.flip_p:
        image = image[:, ::-1]
        if mask is not None:
            mask = PART_LABEL_MIRROR[mask[:, ::-1]].astype(mask.dtype)
        keypoints = _flip_skeleton(keypoints, cw)
        negatives = np.stack([_flip_skeleton(n, cw) for n in negatives]) if len(negatives) else negatives
    gain = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness) * rng.uniform(1 - cfg.channel_gain, 1 + cfg.channel_gain, 3)
    image = np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    if rng.random() < cfg.drop_all_keypoints_p:
        keypoints[:, 2] = 0.0
    elif rng.random() < cfg.drop_random_keypoints_p:
        keypoints[rng.random(len(keypoints)) < cfg.drop_random_keypoints_ratio, 2] = 0.0
    return np.ascontiguousarray(image), keypoints, negatives, None if mask is None else np.ascontiguousarray(mask)


def _flip_skeleton(kps: np.ndarray, width: int) -> np.ndarray:
    flipped = kps[KEYPOINT_MIRROR].copy()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    return flipped
