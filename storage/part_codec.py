"""Compact part embeddings: int8 codes with one float32 scale per (row, part), a quarter of float32's bytes, and
the packed record that stores them with the visibility in one column (schema version 3).

Symmetric quantisation: scale = max|x| / 127 per part vector, code = round(x / scale). The exact KPR
re-rank on decoded parts keeps recall@50 >= 0.99 against float32 parts (bench/store_rows.py).
"""
from __future__ import annotations

import numpy as np

CODE_MAX = 127


def encode_parts(parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Part embeddings [..., D] as int8 codes [..., D] and float32 scales [...] (an all-zero vector: scale 0, codes 0)."""
    values = np.asarray(parts, np.float32)
    scales = (np.abs(values).max(axis=-1) / CODE_MAX).astype(np.float32)
    divisor = np.where(scales > 0, scales, 1.0).astype(np.float32)[..., None]
    codes = np.clip(np.rint(values / divisor), -CODE_MAX, CODE_MAX).astype(np.int8)
    return codes, scales


def decode_parts(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Float32 part embeddings [..., D] from int8 codes [..., D] and their scales [...]."""
    decoded = codes.astype(np.float32)  # then scaled in place: 4,000 x 9 x 128 codes in 2.2 vs 2.4-4.0 ms
    decoded *= np.asarray(scales, np.float32)[..., None]
    return decoded


# Bytes per part after the codes in a packed record: its float32 scale and its float32 visibility.
PACKED_BYTES_PER_PART = 8


def pack_parts(parts: np.ndarray, visibility: np.ndarray) -> np.ndarray:
    """Part embeddings [N, K, D] and visibility [N, K] as one record per row, uint8 [N, K*D + 8K]: the int8 codes,
    then the K float32 scales, then the K float32 visibility scores (little-endian).

    One column instead of three (codes, scales, visibility): reading a row by id costs a read per column, and a search
    reads hundreds of rows by id."""
    codes, scales = encode_parts(parts)
    rows = len(codes)
    tail = np.concatenate([scales.reshape(rows, -1), np.asarray(visibility, np.float32).reshape(rows, -1)], axis=1)
    return np.concatenate([codes.reshape(rows, -1).view(np.uint8), tail.astype("<f4").view(np.uint8)], axis=1)


def unpack_parts(packed: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 part embeddings [N, K, D] and visibility [N, K] from packed records uint8 [N, K*D + 8K] (`pack_parts`)."""
    rows, width = packed.shape
    num_parts = width // (dim + PACKED_BYTES_PER_PART)
    if num_parts * (dim + PACKED_BYTES_PER_PART) != width:
        raise ValueError(f"a packed parts record of {width} bytes does not hold parts of dim {dim}")
    codes = packed[:, : num_parts * dim].view(np.int8).reshape(rows, num_parts, dim)
    tail = np.ascontiguousarray(packed[:, num_parts * dim :]).view("<f4").astype(np.float32, copy=False)
    return decode_parts(codes, tail[:, :num_parts]), tail[:, num_parts:]
