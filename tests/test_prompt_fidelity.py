"""Keypoint prompt fidelity: our prompt tensor against the official KPR formulas.

The reference below restates, in plain numpy, what the official code does at test time with the
"embed_heatmaps_patches" prompt strategy (facts from VlSomers/keypoint_promptable_reidentification):
- ``KeypointsToMasks`` ("keypoints_gaussian", g_scale 11, vis_continous False): one heatmap per
  keypoint, drawn at the network input size, skipped if confidence <= vis_thresh; kernel
  ``gkern(2r + 1)`` with r = int(W / 11), a scipy Gaussian window of std (2r + 1) / 4 (peak 1),
  placed at (int(x), int(y)) and clipped at the image borders;
- positive heatmaps grouped by ``CocoToEightBodyMasks`` / ``CocoToSixBodyMasks`` (max, clamp 0..1);
- negative channel = max over the heatmaps of all keypoints of all other skeletons;
- ``dataset.py`` concatenates [negative, groups]; ``AddBackgroundMask('sum', -1)`` prepends
  background = clamp(1 - sum, 0, 1) and applies no normalisation.
Official order is [background, negative, groups...]; ours is [background, groups..., negative].
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kpr_model import KPRConfig, empty_prompt, keypoints_to_prompt
from kpr_model.keypoints import COCO_KEYPOINTS, KEYPOINT_INDEX, group_keypoint_indices, group_names
from kpr_model.official_import import official_prompt_order

# Groupings as listed in the official coco_keypoints_transforms.py (names and order).
OFFICIAL_CCK8 = [
    ("head", ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]),
    ("left_arm", ["left_shoulder", "left_elbow", "left_wrist"]),
    ("right_arm", ["right_shoulder", "right_elbow", "right_wrist"]),
    ("torso", ["left_shoulder", "right_shoulder", "left_hip", "right_hip"]),
    ("left_leg", ["left_knee", "left_ankle"]),
    ("right_leg", ["right_knee", "right_ankle"]),
    ("left_feet", ["left_ankle"]),
    ("right_feet", ["right_ankle"]),
]
OFFICIAL_CCK6 = [
    ("head", ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]),
    ("left_arm", ["left_elbow", "left_wrist"]),
    ("right_arm", ["right_elbow", "right_wrist"]),
    ("left_leg", ["left_knee", "left_ankle"]),
    ("right_leg", ["right_knee", "right_ankle"]),
    ("torso", ["left_shoulder", "right_shoulder", "left_hip", "right_hip"]),
]
OFFICIAL_GROUPINGS = {"cck8": OFFICIAL_CCK8, "cck6": OFFICIAL_CCK6}


# ----------------------------------------------------------------------------------------------
# Reference (official formulas, float64 numpy)
# ----------------------------------------------------------------------------------------------
def reference_kernel(width: int, g_scale: float = 11.0) -> np.ndarray:
    radius = int(width / g_scale)
    length = 2 * radius + 1
    std = length / 4
    n = np.arange(length) - (length - 1) / 2.0
    window = np.exp(-0.5 * (n / std) ** 2)
    return np.outer(window, window)


def reference_keypoint_heatmaps(kps: np.ndarray, height: int, width: int, vis_thresh: float) -> np.ndarray:
    """[17, H, W]: one clipped Gaussian per visible keypoint (slicing as the official code)."""
    maps = np.zeros((len(kps), height, width))
    kernel = reference_kernel(width)
    r = kernel.shape[0] // 2
    for i, kp in enumerate(kps):
        if kp[2] <= vis_thresh:
            continue
        x, y = int(kp[0]), int(kp[1])
        rt, rb = min(r, y), min(r, height - 1 - y)
        rl, rr = min(r, x), min(r, width - 1 - x)
        maps[i, y - rt : y + rb + 1, x - rl : x + rr + 1] = kernel[r - rt : r + rb + 1, r - rl : r + rr + 1]
    return maps


def reference_prompt(
    target: np.ndarray | None, negatives: np.ndarray | None, height: int, width: int, grouping: str, vis_thresh: float
) -> np.ndarray:
    """Official-order prompt [background, negative, groups...] for one sample."""
    target = np.zeros((17, 3)) if target is None else np.asarray(target, np.float64)
    heat = reference_keypoint_heatmaps(target, height, width, vis_thresh)
    index = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
    groups = np.stack(
        [heat[[index[k] for k in kps]].max(axis=0).clip(0, 1) for _, kps in OFFICIAL_GROUPINGS[grouping]]
    )
    if negatives is not None and len(negatives):
        negative = np.concatenate(
            [reference_keypoint_heatmaps(np.asarray(s, np.float64), height, width, vis_thresh) for s in negatives]
        ).max(axis=0, keepdims=True)
    else:
        negative = np.zeros((1, height, width))
    masks = np.concatenate([negative, groups])
    background = np.clip(1.0 - masks.sum(axis=0), 0, 1)
    return np.concatenate([background[None], masks])


def to_official_order(ours: torch.Tensor) -> np.ndarray:
    """Our [N, bg + groups + neg, H, W] -> official [N, bg + neg + groups, H, W]."""
    depth = ours.shape[1]
    official = torch.empty_like(ours)
    official[:, official_prompt_order(depth)] = ours
    return official.double().numpy()


def gauss(dx: float, dy: float, sigma: float) -> float:
    return math.exp(-0.5 * (dx * dx + dy * dy) / (sigma * sigma))


def kp(skeleton: np.ndarray, name: str, x: float, y: float, c: float) -> None:
    skeleton[KEYPOINT_INDEX[name]] = (x, y, c)


# ----------------------------------------------------------------------------------------------
# Hand-computed small case: 64x32 image, r = int(32 / 11) = 2, sigma = 5 / 4
# ----------------------------------------------------------------------------------------------
@pytest.fixture()
def small_case() -> tuple[KPRConfig, torch.Tensor]:
    config = KPRConfig.tiny()
    assert config.image_size == (64, 32) and config.prompt_grouping == "cck8"
    target = np.zeros((17, 3), np.float32)
    kp(target, "nose", 10.7, 20.2, 0.9)  # pixel (x=10, y=20)
    kp(target, "left_shoulder", 0.5, 62.9, 0.8)  # pixel (0, 62): clipped kernel, in left_arm AND torso
    negative = np.zeros((1, 17, 3), np.float32)
    kp(negative[0], "nose", 11.0, 21.0, 0.95)  # overlaps the target nose
    kp(negative[0], "left_eye", 30.0, 5.0, 0.31)  # just above vis_thresh: kept
    kp(negative[0], "right_eye", 20.0, 5.0, 0.3)  # == vis_thresh: dropped (official: c <= thresh skipped)
    prompt = keypoints_to_prompt([target], [negative], config.image_size, config)
    return config, prompt


def ch(config: KPRConfig, name: str) -> int:
    return 1 + group_names(config.prompt_grouping).index(name)


def test_small_case_kernel_radius_and_peaks(small_case) -> None:
    config, prompt = small_case
    sigma = 1.25
    assert prompt.shape == (1, 10, 64, 32) and prompt.dtype == torch.float32
    head = prompt[0, ch(config, "head")]
    assert head[20, 10] == pytest.approx(1.0)
    assert head[20, 11] == pytest.approx(gauss(1, 0, sigma), abs=1e-6)
    assert head[22, 12] == pytest.approx(gauss(2, 2, sigma), abs=1e-6)  # corner of the 5x5 square
    assert head[20, 13] == 0.0 and head[23, 10] == 0.0  # outside radius 2: truncated
    assert int((head > 0).sum()) == 25
    for other in ("right_arm", "left_leg", "right_leg", "left_foot", "right_foot"):
        assert prompt[0, ch(config, other)].max() == 0.0, other


def test_small_case_border_clipping_and_shared_keypoint(small_case) -> None:
    config, prompt = small_case
    sigma = 1.25
    for group in ("left_arm", "torso"):  # left_shoulder feeds both groups
        m = prompt[0, ch(config, group)]
        assert m[62, 0] == pytest.approx(1.0)
        assert m[63, 2] == pytest.approx(gauss(2, 1, sigma), abs=1e-6)
        assert m[60, 0] == pytest.approx(gauss(0, 2, sigma), abs=1e-6)
        assert int((m > 0).sum()) == 4 * 3  # rows 60..63, cols 0..2 (clipped at left / bottom borders)
    background = prompt[0, 0]
    assert background[62, 0] == 0.0  # 1 - (1 + 1) clamped
    assert background[63, 2] == pytest.approx(1 - 2 * gauss(2, 1, sigma), abs=1e-6)  # both groups counted


def test_small_case_negative_channel_and_background(small_case) -> None:
    config, prompt = small_case
    sigma = 1.25
    negative = prompt[0, -1]
    assert negative[21, 11] == pytest.approx(1.0)
    assert negative[20, 10] == pytest.approx(gauss(1, 1, sigma), abs=1e-6)
    assert negative[5, 30] == pytest.approx(1.0) and negative[5, 31] == pytest.approx(gauss(1, 0, sigma), abs=1e-6)
    assert negative[5, 20] == 0.0  # right eye at confidence == vis_thresh is dropped
    background = prompt[0, 0]
    assert background[20, 10] == 0.0  # 1 - (1 + e^-0.64) clamped
    expected = 1 - gauss(1, 2, sigma) - gauss(0, 1, sigma)  # head + negative at (x=11, y=22)
    assert background[22, 11] == pytest.approx(expected, abs=1e-6)
    assert background[40, 16] == 1.0
    # no normalisation across channels: the sum exceeds 1 where prompts overlap
    assert prompt[0].sum(dim=0).max() > 1.5


def test_small_case_matches_reference(small_case) -> None:
    config, prompt = small_case
    t = np.zeros((17, 3))
    kp(t, "nose", 10.7, 20.2, 0.9)
    kp(t, "left_shoulder", 0.5, 62.9, 0.8)
    n = np.zeros((1, 17, 3))
    kp(n[0], "nose", 11.0, 21.0, 0.95)
    kp(n[0], "left_eye", 30.0, 5.0, 0.31)
    kp(n[0], "right_eye", 20.0, 5.0, 0.3)
    ref = reference_prompt(t, n, 64, 32, "cck8", config.vis_thresh)
    np.testing.assert_allclose(to_official_order(prompt)[0], ref, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Official test configuration: 384x128, cck8, r = int(128 / 11) = 11, sigma = 23 / 4
# ----------------------------------------------------------------------------------------------
def random_skeletons(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    sk = np.zeros((count, 17, 3))
    sk[..., 0] = rng.uniform(-10, width + 10, (count, 17))  # some outside the image
    sk[..., 1] = rng.uniform(-10, height + 10, (count, 17))
    sk[..., 2] = rng.uniform(0, 1, (count, 17))
    inside = (sk[..., 0] >= 0) & (sk[..., 0] < width) & (sk[..., 1] >= 0) & (sk[..., 1] < height)
    sk[~inside] = 0.0  # official: keypoints outside the crop are zeroed (kp_img_to_kp_bbox / albumentations)
    return sk


def test_official_size_radius() -> None:
    config = KPRConfig.solider_swin_base()
    target = np.zeros((17, 3), np.float32)
    kp(target, "nose", 64.9, 200.0, 0.5)
    prompt = keypoints_to_prompt([target], None, config.image_size, config)
    assert prompt.shape == (1, 10, 384, 128)
    head = prompt[0, ch(config, "head")]
    sigma = 23 / 4
    assert head[200, 64] == pytest.approx(1.0)
    assert head[200, 75] == pytest.approx(gauss(11, 0, sigma), abs=1e-6)
    assert head[189, 53] == pytest.approx(gauss(11, 11, sigma), abs=1e-6)
    assert head[200, 76] == 0.0 and head[212, 64] == 0.0
    assert int((head > 0).sum()) == 23 * 23


@pytest.mark.parametrize(
    "factory, grouping",
    [(KPRConfig.solider_swin_base, "cck8"), (KPRConfig.solider_swin_base, "cck6"), (KPRConfig.demo, "cck8")],
)
def test_matches_reference_on_random_skeletons(factory, grouping) -> None:
    config = factory(prompt_grouping=grouping)
    height, width = config.image_size
    rng = np.random.default_rng(0)
    targets = random_skeletons(rng, 3, height, width)
    negatives = [random_skeletons(rng, 2, height, width), None, random_skeletons(rng, 1, height, width)]
    positive = [targets[0], targets[1], None]
    prompt = keypoints_to_prompt(positive, negatives, config.image_size, config)
    official = to_official_order(prompt)
    for i in range(3):
        ref = reference_prompt(positive[i], negatives[i], height, width, grouping, config.vis_thresh)
        np.testing.assert_allclose(official[i], ref, atol=1e-6, err_msg=f"sample {i}")


def test_groupings_match_official_tables() -> None:
    for grouping, table in OFFICIAL_GROUPINGS.items():
        ours = group_keypoint_indices(grouping)
        assert len(ours) == len(table)
        for idx, (_, names) in zip(ours, table):
            assert sorted(idx) == sorted(KEYPOINT_INDEX[n] for n in names)


def test_cck6_puts_each_keypoint_in_its_official_channel() -> None:
    # official cck6 prompt: [background, negative, head, left_arm, right_arm, left_leg, right_leg, torso]
    official_channel = {
        "nose": 2, "left_eye": 2, "right_eye": 2, "left_ear": 2, "right_ear": 2,
        "left_shoulder": 7, "right_shoulder": 7, "left_elbow": 3, "right_elbow": 4, "left_wrist": 3, "right_wrist": 4, "left_hip": 7, "right_hip": 7,
        "left_knee": 5, "right_knee": 6, "left_ankle": 5, "right_ankle": 6,
    }
    config = KPRConfig.tiny(prompt_grouping="cck6")
    for name, channel in official_channel.items():
        target = np.zeros((17, 3), np.float32)
        kp(target, name, 16.0, 30.0, 0.9)
        official = to_official_order(keypoints_to_prompt([target], None, config.image_size, config))[0]
        assert official.shape == (8, 64, 32)
        lit = [c for c in range(8) if official[c, 30, 16] == 1.0]
        assert lit == [channel], name
        assert official[0, 30, 16] == 0.0 and official[1].max() == 0.0


def test_empty_prompt_is_official_empty() -> None:
    config = KPRConfig.solider_swin_base()
    prompt = keypoints_to_prompt([None], None, config.image_size, config)
    assert torch.equal(prompt, empty_prompt(1, config.image_size, config))
    assert prompt[0, 0].min() == 1.0 and prompt[0, 1:].abs().max() == 0.0


def test_official_channel_permutation_is_consistent() -> None:
    # ours = [bg, g1..gP, neg]; official = [bg, neg, g1..gP]
    assert official_prompt_order(10) == [0, 2, 3, 4, 5, 6, 7, 8, 9, 1]
