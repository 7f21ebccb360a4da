"""Checks of person crops and the chunking of an embedding call into batches, shared by every encoder (NumPy only)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kpr_model.embeddings import ReIDEmbeddings


def check_lengths(n: int, keypoints: Sequence | None, negative_keypoints: Sequence | None) -> None:
    """Refuse keypoint lists that do not hold one entry per crop."""
    for name, items in (("keypoints", keypoints), ("negative_keypoints", negative_keypoints)):
        if items is not None and len(items) != n:
            raise ValueError(f"{name} must have one entry per crop ({n}), got {len(items)}")


def check_crop(crop: np.ndarray) -> None:
    """Refuse anything but a non-empty HxWx3 uint8 (RGB) array."""
    if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(
            "crops must be HxWx3 uint8 RGB numpy arrays, got "
            f"{type(crop).__name__} {getattr(crop, 'shape', None)} {getattr(crop, 'dtype', None)}"
        )
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"empty crop of shape {crop.shape}")


BatchEmbedder = Callable[..., ReIDEmbeddings]
"""(crops, keypoints, negative_keypoints[, cameras]) of one chunk -> its embeddings."""


def embed_in_batches(
    crops: Sequence[np.ndarray],
    keypoints: Sequence[np.ndarray | None] | None,
    negative_keypoints: Sequence[np.ndarray | None] | None,
    batch_size: int,
    embed_batch: BatchEmbedder,
    num_parts: int,
    dim: int,
    cameras: Sequence[int] | None = None,
) -> ReIDEmbeddings:
    """Apply ``embed_batch`` to consecutive chunks of at most ``batch_size`` crops (and keypoints); concatenate.

    ``cameras`` (one camera id per crop), when given, is chunked alike and passed as a fourth argument.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    check_lengths(len(crops), keypoints, negative_keypoints)
    if cameras is not None and len(cameras) != len(crops):
        raise ValueError(f"cameras must have one entry per crop ({len(crops)}), got {len(cameras)}")
    chunks = []
    for start in range(0, len(crops), batch_size):
        window = slice(start, start + batch_size)
        per_crop = (keypoints, negative_keypoints) + (() if cameras is None else (cameras,))
        chunks.append(embed_batch(crops[window], *(None if items is None else items[window] for items in per_crop)))
    if not chunks:
        return ReIDEmbeddings(np.zeros((0, dim), np.float32), np.zeros((0, num_parts, dim), np.float32),
                              np.zeros((0, num_parts), np.float32))
    return ReIDEmbeddings.concat(chunks)
