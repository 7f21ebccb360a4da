"""KPR test-time distance: visibility-masked mean of per-part euclidean distances (spec section 5).

Search (storage/) and benchmarking (training/) both call this module so their rankings agree.
"""
from __future__ import annotations

import numpy as np
import torch

from kpr_model.embeddings import ReIDEmbeddings

# storage/ may import this module only (ARCHITECTURE.md), so the embedding type it takes comes with it.
__all__ = ["ReIDEmbeddings", "kpr_distance", "part_distance"]

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(value: ArrayLike, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy array or tensor as a tensor on ``device`` (optionally cast to ``dtype``)."""
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return tensor.to(device=device, dtype=dtype or tensor.dtype)


def _check_shapes(feats: torch.Tensor, vis: torch.Tensor, name: str) -> None:
    """Refuse features that are not [N, P, D] or visibility that is not the matching [N, P]."""
    if feats.dim() != 3 or vis.shape != feats.shape[:2]:
        raise ValueError(
            f"{name}: expected features [N, P, D] and visibility [N, P], got {tuple(feats.shape)} and {tuple(vis.shape)}"
        )


def part_distance(
    query_feats: ArrayLike,
    query_vis: ArrayLike,
    gallery_feats: ArrayLike,
    gallery_vis: ArrayLike,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Pairwise KPR part distance [Q, G] between part-based embeddings, gallery taken in chunks.

    Inputs are [Q, P, D], [Q, P], [G, P, D], [G, P]. Visibility is binarised (``vis > 0``); per part
    the euclidean distance is sqrt(relu(|q|^2 - 2 q.g + |g|^2)); parts are combined by the mean
    weighted by w_k = sqrt(v_q,k * v_g,k), i.e. over mutually visible parts. Pairs without any
    mutually visible part get the largest finite distance of the whole matrix + 1 (1.0 when no
    pair has one). Peak memory is O(Q * chunk_size) besides the result (bench/part_distance_memory.py);
    the result is on the CPU.
    ``device`` defaults to the query tensor's device (CPU for numpy input).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if device is None:
        device = query_feats.device if isinstance(query_feats, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    qf = _as_tensor(query_feats, device, torch.float32)
    qv = _as_tensor(query_vis, device) > 0
    gf = _as_tensor(gallery_feats, torch.device("cpu"))
    gv = _as_tensor(gallery_vis, torch.device("cpu")) > 0
    _check_shapes(qf, qv, "query")
    _check_shapes(gf, gv, "gallery")
    if qf.shape[1:] != gf.shape[1:]:
        raise ValueError(f"query parts/dim {tuple(qf.shape[1:])} differ from gallery's {tuple(gf.shape[1:])}")

    num_q, num_parts = qf.shape[0], qf.shape[1]
    num_g = gf.shape[0]
    result = torch.empty((num_q, num_g), dtype=torch.float32)
    q_sq = qf.pow(2).sum(dim=-1)
    q_mask = qv.to(torch.float32)
    max_finite = torch.tensor(float("-inf"))
    missing = False
    for start in range(0, num_g, chunk_size):
        g_feats = gf[start : start + chunk_size].to(device=device, dtype=torch.float32)
        g_mask = gv[start : start + chunk_size].to(device=device, dtype=torch.float32)
        g_sq = g_feats.pow(2).sum(dim=-1)
        # Binary masks: w_k = sqrt(v_q,k * v_g,k) = v_q,k * v_g,k, so the weight total is a mask product.
        weight_total = q_mask @ g_mask.T
        weighted_sum = torch.zeros_like(weight_total)
        for k in range(num_parts):
            dist_k = torch.addmm(g_sq[None, :, k], qf[:, k], g_feats[:, k].T, alpha=-2.0).add_(q_sq[:, k, None])
            weighted_sum.add_(dist_k.clamp_min_(0.0).sqrt_().mul_(q_mask[:, k, None]).mul_(g_mask[None, :, k]))
        has_part = weight_total > 0
        chunk = weighted_sum.div_(weight_total.clamp_min_(1e-12)).masked_fill_(~has_part, torch.inf)
        if bool(has_part.any()):
            max_finite = torch.maximum(max_finite, chunk[has_part].max().cpu())
        missing = missing or not bool(has_part.all())
        result[:, start : start + chunk.shape[1]] = chunk.cpu()
    if missing:
        fill = float(max_finite) + 1.0 if torch.isfinite(max_finite) else 1.0
        for start in range(0, num_g, chunk_size):
            block = result[:, start : start + chunk_size]
            block.masked_fill_(torch.isinf(block), fill)
    return result

def kpr_distance(
    query: ReIDEmbeddings,
    gallery: ReIDEmbeddings,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """KPR distance [Q, G] between two embedding batches, on their holistic + parts test stacks."""
    q_feats, q_vis = query.test_stack()
    g_feats, g_vis = gallery.test_stack()
    return part_distance(q_feats, q_vis, g_feats, g_vis, chunk_size=chunk_size, device=device).numpy()
