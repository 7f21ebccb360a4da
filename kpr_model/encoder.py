"""Product-facing KPR encoder: RGB person crops (+ optional keypoint prompts) -> ``ReIDEmbeddings``.

Used by ingestion workers and search. Crops of any size are resized to ``config.image_size`` as
the official test transform does (keypoints rescaled with them), normalised, prompted and
embedded in eval mode by ``KPR.forward_reid``, which computes no training-only head. Outputs
follow the official test embeddings (spec section 5): L2-normalised BN-foreground embedding as
the holistic vector, L2-normalised part embeddings, and the part visibility.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from kpr_model.checkpoint import load_checkpoint
from kpr_model.config import KPRConfig
from kpr_model.crop_batches import check_crop, check_lengths, embed_in_batches
from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.model import KPR
from kpr_model.model_facts import KPR_KIND
from kpr_model.prompts import keypoints_to_prompt

def prepare_crops(
    crops: Sequence[np.ndarray],
    keypoints: Sequence[np.ndarray | None] | None,
    negative_keypoints: Sequence[np.ndarray | None] | None,
    config: KPRConfig,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images [N, 3, H, W] and prompts [N, P + 2, H, W] on ``device`` from HxWx3 uint8 RGB crops.

    As the official test transform: OpenCV bilinear resize of the uint8 crop (no antialiasing),
    then (pixel / 255 - mean) / std. Keypoints ([17, 3] per crop) and negatives ([M, 17, 3] per
    crop) are in each crop's pixels and follow the resize (``_rescale``). Only the resized uint8
    pixels and the keypoints cross to ``device``: normalisation and prompt rendering happen there.
    """
    device = torch.device(device)
    n = len(crops)
    check_lengths(n, keypoints, negative_keypoints)
    size = config.image_size
    for crop in crops:
        check_crop(crop)
    resized = [cv2.resize(np.ascontiguousarray(c), size[::-1], interpolation=cv2.INTER_LINEAR) for c in crops]
    pixels = torch.from_numpy(np.stack(resized)) if resized else torch.zeros(0, *size, 3, dtype=torch.uint8)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    batch = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(config.norm_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.norm_std, device=device).view(1, 3, 1, 1)
    shapes = [c.shape for c in crops]
    positive = None if keypoints is None else [_rescale(k, s, size) for k, s in zip(keypoints, shapes)]
    negative = None if negative_keypoints is None else [
        _rescale(k, s, size) for k, s in zip(negative_keypoints, shapes)
    ]
    prompts = keypoints_to_prompt([None] * n if positive is None else positive, negative, size, config, device)
    return (batch - mean) / std, prompts


def _rescale(kps: np.ndarray | None, crop_shape: tuple[int, ...], size: tuple[int, int]) -> np.ndarray | None:
    """Keypoints [..., 3] moved from a crop's pixels to the network input's; those outside the crop dropped.

    Inside means 0 <= x < crop width and 0 <= y < crop height on the crop's own pixel grid, before
    any scaling, as the official loader decides (x == width is outside); a dropped keypoint becomes
    (0, 0, 0). The prompt draws a keypoint at its integer pixel, so a kept one is truncated to that
    pixel here, in float64 as officially (a float32 cast first would turn 191.99999999999997 into 192),
    and stays inside the input.
    """
    if kps is None:
        return None
    points = np.asarray(kps, dtype=np.float64)
    height, width = crop_shape[:2]
    x, y = points[..., 0], points[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    scaled = points * np.array([size[1] / width, size[0] / height, 1.0])
    scaled[..., :2] = np.minimum(np.floor(scaled[..., :2]), np.array(size[::-1]) - 1)
    return np.where(inside[..., None], scaled, 0.0).astype(np.float32)


class EncoderShape:
    """Kind, embedding size and part count of a KPR encoder, read from its ``config``."""

    kind = KPR_KIND
    config: KPRConfig

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return self.config.embed_dim

    @property
    def num_parts(self) -> int:
        """Number of body parts K."""
        return self.config.num_parts


class KPREncoder(EncoderShape):
    """Embeds person crops with a KPR model; the single entry point of the product into the network."""

    def __init__(self, model: KPR, config: KPRConfig, device: str | torch.device = "cpu",
                 model_id: str | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_id = model_id

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "KPREncoder":
        """Encoder for a project checkpoint directory (raises CheckpointError when missing/incomplete)."""
        model, config, model_id = load_checkpoint(path, device=device)
        return cls(model, config, device=device, model_id=model_id)

    def embed(
        self,
        crops: Sequence[np.ndarray],
        keypoints: Sequence[np.ndarray | None] | None = None,
        negative_keypoints: Sequence[np.ndarray | None] | None = None,
        batch_size: int = 64,
        cameras: Sequence[int] | None = None,
    ) -> ReIDEmbeddings:
        """Embeddings of HxWx3 uint8 RGB crops, optionally prompted by per-crop target and negative keypoints.

        ``cameras`` (one camera id per crop, for a model with camera embeddings) adds the camera term as the
        official test engine does; without them it is left out, as the official feature extractor does.
        The model runs in eval mode (its previous mode is restored), so a training loop can validate with it.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            return embed_in_batches(crops, keypoints, negative_keypoints, batch_size, self._embed_batch,
                                    self.num_parts, self.dim, cameras)
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def _embed_batch(self, crops: Sequence[np.ndarray], keypoints: Sequence[np.ndarray | None] | None,
                     negative_keypoints: Sequence[np.ndarray | None] | None,
                     cameras: Sequence[int] | None = None) -> ReIDEmbeddings:
        images, prompts = prepare_crops(crops, keypoints, negative_keypoints, self.config, device=self.device)
        camera_ids = None if cameras is None else torch.as_tensor(np.asarray(cameras, np.int64), device=self.device)
        holistic, parts, visibility = self.model.forward_reid(images, prompts, camera_ids)
        return ReIDEmbeddings(holistic.float().cpu().numpy(), parts.float().cpu().numpy(),
                              visibility.float().cpu().numpy())
