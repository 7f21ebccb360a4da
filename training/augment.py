"""Joint augmentation of a ReID sample: image, target/negative keypoints and part mask move together.

``augment`` transforms one sample; ``bipo`` then adds KPR's batch-wise inter-person occlusion.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from kpr_model.keypoints import COCO_KEYPOINTS, group_names
from training.datasets.part_masks import foreground, is_part_confidences, resized_confidences


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

Sample = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]
"""(image HxWx3 uint8, target keypoints [17, 3], negative keypoints [M, 17, 3], part mask or None).

The part mask is labels HxW or part confidences [K, h, w]; ``augment`` brings the latter to the image's size."""


@dataclass
class AugmentConfig:
    """Probabilities and ranges; defaults follow the spec's prompt dropout (drop all p 0.3, random 0.5) and BIPO.

    BIPO (spec section 6, ``cfg.data.bipo``): each sample is occluded with probability ``bipo_p`` by
    another identity of its batch whose box covers a fraction ``bipo_overlap`` of the sample's box.
    """

    flip_p: float = 0.5
    crop_scale: tuple[float, float] = (0.85, 1.0)
    brightness: float = 0.3
    channel_gain: float = 0.1
    drop_all_keypoints_p: float = 0.3
    drop_random_keypoints_p: float = 0.5
    drop_random_keypoints_ratio: float = 0.5
    bipo_p: float = 0.2
    bipo_overlap: tuple[float, float] = (0.5, 0.8)

    def __post_init__(self) -> None:
        """Refuse settings the augmentation cannot use, naming the setting.

        Raised as TypeError, like an unknown keyword, so that every bad ``augment`` entry of a training
        config surfaces the same way (TrainConfig.from_dict turns it into one TrainConfigError line).
        """
        for name in ("flip_p", "brightness", "channel_gain", "drop_all_keypoints_p", "drop_random_keypoints_p",
                     "drop_random_keypoints_ratio", "bipo_p"):
            _fraction(name, getattr(self, name))
        for name in ("crop_scale", "bipo_overlap"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise TypeError(f"augment setting {name} must be [low, high], got {value!r}")
            low, high = (_fraction(name, v) for v in value)
            if not 0 < low <= high:
                raise TypeError(f"augment setting {name} must satisfy 0 < low <= high <= 1, got {value!r}")
            setattr(self, name, (float(low), float(high)))


def _fraction(name: str, value: object) -> float:
    """``value`` if it is a number in [0, 1], else TypeError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise TypeError(f"augment setting {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def augment(image: np.ndarray, keypoints: np.ndarray, negatives: np.ndarray, mask: np.ndarray | None,
            rng: np.random.Generator, cfg: AugmentConfig, grouping: str) -> Sample:
    """One random augmentation of (image HxWx3 uint8, keypoints [17,3], negatives [M,17,3], part mask or None).

    The mask's parts are those of the part grouping ``grouping``; a flip swaps its left_* and right_* parts."""
    h, w = image.shape[:2]
    if mask is not None and is_part_confidences(mask):
        mask = resized_confidences(mask, h, w)
    keypoints, negatives = keypoints.copy(), negatives.copy()
    scale = rng.uniform(*cfg.crop_scale)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = image[y0:y0 + ch, x0:x0 + cw]
    mask = None if mask is None else mask[..., y0:y0 + ch, x0:x0 + cw]
    for kps in (keypoints, *negatives):
        kps[:, 0] -= x0
        kps[:, 1] -= y0
        outside = (kps[:, 0] < 0) | (kps[:, 0] >= cw) | (kps[:, 1] < 0) | (kps[:, 1] >= ch)
        kps[outside, 2] = 0.0
    if rng.random() < cfg.flip_p:
        image = image[:, ::-1]
        if mask is not None:
            flipped, mirror = mask[..., ::-1], _mirror_index(group_names(grouping))
            mirrored = flipped[mirror] if is_part_confidences(mask) else np.concatenate([[0], 1 + mirror])[flipped]
            mask = mirrored.astype(mask.dtype)
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
    """A skeleton mirrored in a crop of ``width`` pixels (x -> width - 1 - x, left and right joints swapped)."""
    flipped = kps[KEYPOINT_MIRROR].copy()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    return flipped


def bipo(items: Sequence[Sample], sources: Sequence[Sample], pids: Sequence[int], rng: np.random.Generator,
         cfg: AugmentConfig) -> list[Sample]:
    """KPR's batch-wise inter-person occlusion (BIPO) over a batch of augmented ``items``.

    With probability ``cfg.bipo_p`` an item is occluded by the un-augmented ``sources[j]`` of another
    identity (``pids``) of the batch that has a part mask: see ``occlude``. Probability 0 draws nothing.
    """
    if cfg.bipo_p <= 0:
        return list(items)
    out = []
    for i, item in enumerate(items):
        candidates = [j for j, source in enumerate(sources) if pids[j] != pids[i] and source[3] is not None]
        if rng.random() >= cfg.bipo_p or not candidates:
            out.append(item)
            continue
        occluder = sources[candidates[int(rng.integers(len(candidates)))]]
        out.append(occlude(item, occluder, float(rng.uniform(*cfg.bipo_overlap)), rng))
    return out


def occlude(item: Sample, occluder: Sample, overlap: float, rng: np.random.Generator) -> Sample:
    """``item`` with the person of ``occluder`` (its mask's foreground) pasted in front of it.

    The occluder crop is resized to the item's size and shifted down (it stands closer to the camera)
    and left or right so that its box covers ``overlap`` of the item's box. Under the pasted pixels the
    part labels become background and the item's keypoints (target and negatives) lose their
    confidence, as in the official BIPO; the occluder's keypoints that land on its pasted pixels become
    one more negative skeleton (its other keypoints get confidence 0). The pasted person's shape is its
    mask's ``foreground``; under it part confidences become 0 as well.
    """
    image, keypoints, negatives, mask = item
    height, width = image.shape[:2]
    o_image, o_keypoints, _, o_mask = occluder
    sprite = cv2.resize(o_image, (width, height), interpolation=cv2.INTER_LINEAR)
    shape = cv2.resize(foreground(o_mask).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    cover_x = rng.uniform(overlap, 1.0)
    dy = round((1.0 - overlap / cover_x) * height)
    dx = round((1.0 - cover_x) * width) * (1 if rng.random() < 0.5 else -1)
    pasted = _shift(shape, dx, dy)
    image = np.where(pasted[..., None], _shift(sprite, dx, dy), image)
    mask = None if mask is None else np.where(pasted, 0, mask).astype(mask.dtype)
    negative = o_keypoints.astype(np.float32).copy()
    negative[:, 0] = (negative[:, 0] + 0.5) * width / o_image.shape[1] - 0.5 + dx
    negative[:, 1] = (negative[:, 1] + 0.5) * height / o_image.shape[0] - 0.5 + dy
    negative[~_on(negative, pasted), 2] = 0.0
    keypoints, negatives = keypoints.copy(), negatives.copy()
    keypoints[_on(keypoints, pasted), 2] = 0.0
    negatives[_on(negatives, pasted), 2] = 0.0
    return image, keypoints, np.concatenate([negatives, negative[None]]).astype(np.float32), mask


def _shift(picture: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``picture`` moved by (dx, dy) pixels within its own frame (uncovered pixels are 0)."""
    height, width = picture.shape[:2]
    moved = np.zeros_like(picture)
    moved[dy:, max(dx, 0):width + min(dx, 0)] = picture[:height - dy, max(-dx, 0):width - max(dx, 0)]
    return moved


def _on(kps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per keypoint of ``kps`` [..., 3]: whether its nearest pixel lies inside the crop and in ``region``."""
    height, width = region.shape
    x, y = np.round(kps[..., 0]), np.round(kps[..., 1])
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return inside & region[np.where(inside, y, 0).astype(int), np.where(inside, x, 0).astype(int)]
