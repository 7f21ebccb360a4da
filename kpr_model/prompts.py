"""Keypoint prompts: COCO-17 keypoints -> dense prompt tensor [N, P + 2, H, W] (spec section 1).

Channel order: [background, group_1 .. group_P, negative]. The official code builds
[background, negative, group_1 .. group_P] (``official_import`` permutes the tokenizer weights);
the values of each channel are the official ones (``embed_heatmaps_patches`` strategy):

- Heatmaps are drawn at the network input size (``dataset.py`` getitem: ``prompt_mask_size =
  img_size``), from keypoints already rescaled to that size; no later resize is needed.
- Each keypoint with confidence > vis_thresh (0.3) inside the image becomes a Gaussian with peak
  1 at pixel (int(x), int(y)), truncated to a square of radius r = int(W / g_scale), g_scale = 11
  (``KeypointsToMasks.get_gaussian_kernel``), with the window of ``gkern(2r + 1)``: sigma =
  (2r + 1) / 4, value exp(-0.5 * (d / sigma)^2) per axis; the square is clipped at the borders
  (``_compute_keypoints_gaussian_heatmaps``, "keypoints_gaussian" mode, vis_continous False).
- A group channel is the max of its keypoints' heatmaps, clamped to [0, 1]
  (``MaskGroupingTransform``, combine_mode "max"; cck8 = ``CocoToEightBodyMasks``).
- The negative channel is the max over all 17 keypoint heatmaps of all other skeletons (not
  grouped); zeros when there is none.
- Background = clamp(1 - sum of all other channels (groups + negative), 0, 1), and no
  normalisation across channels (``AddBackgroundMask('sum', softmax_weight=-1)`` in
  ``build_transforms``). An absent prompt is all zeros with the background channel at 1.

The official maps are float64 (numpy) cast to float32 by the backbone; the kernel and the
background sum are computed in float64 here too, then stored in float32.

Keypoints are (x, y, confidence) in the pixel coordinates of the image of size ``image_size``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from kpr_model.config import KPRConfig
from kpr_model.keypoints import NUM_KEYPOINTS, group_keypoint_indices

ArrayLike = Union[np.ndarray, torch.Tensor]
Skeletons = Union[ArrayLike, Sequence[Union[ArrayLike, None]]]


def keypoints_to_prompt(
    positive: Skeletons | None,
    negative: Sequence[ArrayLike | None] | None,
    image_size: tuple[int, int],
    config: KPRConfig,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Prompt tensor [N, P + 2, H, W] from target keypoints [N, 17, 3] and per-sample negatives [M, 17, 3].

    ``positive`` may be an array [N, 17, 3] or a list of [17, 3] arrays / None (no target prompt);
    ``negative`` is None or a list (one entry per sample) of [M, 17, 3] arrays / None.
    """
    n = _batch_size(positive, negative)
    depth = config.num_prompt_channels
    prompt = torch.zeros(n, depth, *image_size, device=device)
    _splat_groups(prompt, _stack_skeletons(positive, n, device), config.prompt_grouping, 1, config)
    skeletons, owners = _flatten_negatives(negative, n, device)
    _splat_into(prompt, skeletons, (owners * depth + depth - 1)[:, None].expand(-1, NUM_KEYPOINTS), config)
    prompt[:, 0] = (1.0 - prompt[:, 1:].double().sum(dim=1)).clamp(0.0, 1.0).to(prompt.dtype)
    return prompt


def empty_prompt(
    batch: int, image_size: tuple[int, int], config: KPRConfig, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The "no prompt" tensor [N, P + 2, H, W]: zeros with the background channel at 1."""
    prompt = torch.zeros(batch, config.num_prompt_channels, *image_size, device=device)
    prompt[:, 0] = 1.0
    return prompt


def keypoints_to_part_labels(
    keypoints: Skeletons,
    image_size: tuple[int, int],
    config: KPRConfig,
    threshold: float = 0.05,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Integer part-label map [N, H, W] (0 = background, 1..K = parts) from target keypoints.

    A training target for the body-part attention loss when no human-parsing masks exist: part
    heatmaps grouped by ``config.part_grouping``, background where no part reaches ``threshold``
    (official keypoint target masks), else the argmax part. Ties go to the later group, so a
    keypoint shared by two groups labels the more specific one (ankle -> foot, not leg).
    """
    n = _batch_size(keypoints, None)
    num_parts = len(group_keypoint_indices(config.part_grouping))
    parts = torch.zeros(n, num_parts, *image_size, device=device)
    _splat_groups(parts, _stack_skeletons(keypoints, n, device), config.part_grouping, 0, config)
    best, reversed_label = parts.flip(1).max(dim=1)
    return torch.where(best >= threshold, num_parts - reversed_label, torch.zeros_like(reversed_label))


def gaussian_radius_sigma(width: int, config: KPRConfig) -> tuple[int, float]:
    """Heatmap truncation radius (pixels) and sigma for images of the given width."""
    radius = int(width / config.gaussian_scale)
    return radius, (2 * radius + 1) / 4.0


def _splat_groups(
    maps: torch.Tensor, skeletons: torch.Tensor, grouping: str, first_channel: int, config: KPRConfig
) -> None:
    """Max-splat skeletons [N, 17, 3] into maps[n, first_channel + group]; a keypoint may feed two groups."""
    members = [(k, g) for g, idx in enumerate(group_keypoint_indices(grouping)) for k in idx]
    kp_index = torch.tensor([k for k, _ in members], device=maps.device)
    group_index = torch.tensor([g for _, g in members], device=maps.device)
    dest = torch.arange(len(skeletons), device=maps.device)[:, None] * maps.shape[1] + first_channel + group_index
    _splat_into(maps, skeletons[:, kp_index], dest, config)


def _splat_into(maps: torch.Tensor, kps: torch.Tensor, dest: torch.Tensor, config: KPRConfig) -> None:
    """Max-splat in place the truncated Gaussian of each keypoint of [S, G, 3] into ``maps`` [A, B, H, W].

    ``dest[s, g]`` is the flat index (a * B + b) of the map that receives keypoint (s, g). Only the
    (2r + 1)^2 pixels around each kept keypoint are touched, so this stays cheap per crop.
    """
    height, width = maps.shape[-2:]
    radius, sigma = gaussian_radius_sigma(width, config)
    x, y, conf = kps[..., 0], kps[..., 1], kps[..., 2]
    keep = (conf > config.vis_thresh) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    offsets = torch.arange(-radius, radius + 1, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets.double() / sigma) ** 2)  # official window, in float64 like scipy
    cols = torch.nan_to_num(x).floor().long()[..., None] + offsets  # [S, G, L]
    rows = torch.nan_to_num(y).floor().long()[..., None] + offsets
    col_ok = (cols >= 0) & (cols < width) & keep[..., None]
    row_ok = (rows >= 0) & (rows < height)
    window = (kernel[:, None] * kernel[None, :]).to(maps.dtype)  # outer product rounded once, as the cast official map
    values = window * (row_ok[..., :, None] & col_ok[..., None, :])  # [S, G, L, L]
    pixel = rows.clamp(0, height - 1)[..., :, None] * width + cols.clamp(0, width - 1)[..., None, :]
    index = dest[..., None, None] * (height * width) + pixel
    maps.view(-1).scatter_reduce_(0, index.reshape(-1), values.reshape(-1), "amax")


def _as_skeletons(array: ArrayLike, device: torch.device | str) -> torch.Tensor:
    """Float32 tensor [..., 17, 3] on ``device``, rejecting other shapes."""
    tensor = array if torch.is_tensor(array) else torch.from_numpy(np.asarray(array, dtype=np.float32))
    tensor = tensor.to(device=device, dtype=torch.float32)
    if tensor.shape[-2:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape [..., {NUM_KEYPOINTS}, 3], got {tuple(tensor.shape)}")
    return tensor


def _batch_size(positive: Skeletons | None, negative: Sequence[ArrayLike | None] | None) -> int:
    if positive is not None:
        return len(positive)
    if negative is not None:
        return len(negative)
    raise ValueError("at least one of positive or negative keypoints must be given to know the batch size")


def _stack_skeletons(items: Skeletons | None, n: int, device: torch.device | str) -> torch.Tensor:
    """[N, 17, 3] tensor from an array or a list of [17, 3] arrays / None (None = no keypoints)."""
    if items is None or len(items) == 0:
        stacked = torch.zeros(n if items is None else 0, NUM_KEYPOINTS, 3, device=device)
    elif isinstance(items, (np.ndarray, torch.Tensor)):
        stacked = _as_skeletons(items, device)
    else:
        zeros = torch.zeros(NUM_KEYPOINTS, 3, device=device)
        stacked = torch.stack([zeros if k is None else _as_skeletons(k, device) for k in items])
    if stacked.ndim != 3 or stacked.shape[0] != n:
        raise ValueError(f"expected {n} target skeletons of shape [17, 3], got {tuple(stacked.shape)}")
    return stacked


def _flatten_negatives(
    negative: Sequence[ArrayLike | None] | None, n: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """All negative skeletons [M_total, 17, 3] and the sample index owning each one."""
    if negative is None:
        negative = [None] * n
    if len(negative) != n:
        raise ValueError(f"negative keypoints must have one entry per sample ({n}), got {len(negative)}")
    skeletons, owners = [], []
    for i, item in enumerate(negative):
        if item is None:
            continue
        sk = _as_skeletons(item, device).reshape(-1, NUM_KEYPOINTS, 3)
        skeletons.append(sk)
        owners.append(torch.full((sk.shape[0],), i, dtype=torch.long, device=device))
    if not skeletons:
        return torch.zeros(0, NUM_KEYPOINTS, 3, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(skeletons), torch.cat(owners)
