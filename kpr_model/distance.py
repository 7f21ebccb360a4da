"""KPR test-time distance: visibility-masked mean of per-part euclidean distances (spec section 5).

Search (storage/) and benchmarking (training/) both call this module so their rankings agree.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kpr_model.embeddings import ReIDEmbeddings, aggregate

# storage/ may import this module only (ARCHITECTURE.md), so the embedding type and its
# aggregation come with it.
__all__ = [
    "ReIDEmbeddings",
    "aggregate",
    "check_parts",
    "k_reciprocal_rerank",
    "kpr_distance",
    "part_distance",
    "per_part_distances",
]

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


def check_parts(parts: Sequence[int], num_parts: int) -> list[int]:
    """Sorted distinct 0-based part indices; ValueError naming the valid range for anything else."""
    chosen = sorted({int(p) for p in parts})
    if not chosen:
        raise ValueError("choose at least one part")
    bad = [p for p in chosen if not 0 <= p < num_parts]
    if bad:
        raise ValueError(f"part index {bad[0]} is out of range: valid part indices are 0..{num_parts - 1}")
    return chosen


def _distance_stack(embeddings: ReIDEmbeddings, parts: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """What the distance compares: holistic + all parts, or only the chosen parts (no holistic entry)."""
    if parts is None:
        return embeddings.test_stack()
    index = check_parts(parts, embeddings.num_parts)
    return embeddings.parts[:, index].astype(np.float32), embeddings.visibility[:, index].astype(np.float32)


def kpr_distance(
    query: ReIDEmbeddings,
    gallery: ReIDEmbeddings,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
    parts: Sequence[int] | None = None,
) -> np.ndarray:
    """KPR distance [Q, G] between two embedding batches, on their holistic + parts test stacks.

    With ``parts`` (0-based indices) only those part embeddings and their visibility count, and the
    holistic entry is left out: "find these boots" compares the feet and nothing else.
    """
    q_feats, q_vis = _distance_stack(query, parts)
    g_feats, g_vis = _distance_stack(gallery, parts)
    return part_distance(q_feats, q_vis, g_feats, g_vis, chunk_size=chunk_size, device=device).numpy()


def per_part_distances(query: ReIDEmbeddings, gallery: ReIDEmbeddings) -> np.ndarray:
    """Euclidean distance [G, K] of each part between one query and each gallery row, for display.

    NaN where the part is not visible in both (visibility 0 on either side), as the KPR distance
    leaves such parts out.
    """
    if len(query) != 1:
        raise ValueError(f"per_part_distances takes one query embedding, got {len(query)}")
    diff = gallery.parts.astype(np.float64) - query.parts[0].astype(np.float64)
    mutual = (query.visibility[0] > 0)[None, :] & (gallery.visibility > 0)
    return np.where(mutual, np.linalg.norm(diff, axis=-1), np.nan).astype(np.float32)


def _nearest(dist: np.ndarray, count: int, block: int = 1024) -> np.ndarray:
    """Indices [N, count] of each item's nearest items: the item itself first, then by distance.

    Rows are ranked ``block`` at a time, so only a block of the [N, N] matrix is ever copied.
    """
    n = len(dist)
    out = np.empty((n, count), dtype=np.int64)
    for start in range(0, n, block):
        ranked = np.array(dist[start : start + block], dtype=np.float64)
        own = np.arange(len(ranked))
        ranked[own, start + own] = -np.inf
        if count < n:
            candidates = np.argpartition(ranked, count - 1, axis=1)[:, :count]
        else:
            candidates = np.broadcast_to(np.arange(n), ranked.shape)
        order = np.take_along_axis(ranked, candidates, axis=1).argsort(axis=1, kind="stable")
        out[start : start + block] = np.take_along_axis(candidates, order, axis=1)
    return out


def _reciprocal_sets(nearest: np.ndarray, k: int) -> list[np.ndarray]:
    """R(i, k) for every item i: the members of N(i, k) that have i in their own N(j, k).

    N(i, k) is i plus its k nearest other items, so every R(i, k) holds i itself.
    """
    top = nearest[:, : k + 1]
    mutual = (top[top] == np.arange(len(top))[:, None, None]).any(axis=2)
    return [row[keep] for row, keep in zip(top, mutual)]


def _expanded_sets(nearest: np.ndarray, k1: int) -> list[np.ndarray]:
    """R*(i, k1): R(i, k1) plus R(q, k1/2) of each q in it that shares at least 2/3 of its members with R(i, k1)."""
    full = _reciprocal_sets(nearest, k1)
    half = _reciprocal_sets(nearest, max(1, round(k1 / 2)))
    in_base = np.zeros(len(nearest), dtype=bool)
    expanded = []
    for base in full:
        in_base[base] = True
        extra = [half[q] for q in base if in_base[half[q]].sum() >= 2.0 / 3.0 * len(half[q])]
        in_base[base] = False
        expanded.append(np.unique(np.concatenate([base, *extra])))
    return expanded


def _sparse_mean(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The mean of sparse vectors given as (indices, values) pairs, as one (indices, values) pair."""
    indices = np.concatenate([r[0] for r in rows])
    values = np.concatenate([r[1] for r in rows])
    unique, inverse = np.unique(indices, return_inverse=True)
    return unique, np.bincount(inverse, weights=values, minlength=len(unique)) / len(rows)


def _jaccard(encoded: list[tuple[np.ndarray, np.ndarray]], num_query: int) -> np.ndarray:
    """1 - sum_j min(V_p,j, V_g,j) / sum_j max(V_p,j, V_g,j) for every query p and gallery item g [Q, G].

    The sparse vectors of the gallery are indexed by column, so each query only visits the
    gallery entries that share one of its non-zero columns; sum max = sum V_p + sum V_g - sum min.
    """
    gallery = encoded[num_query:]
    rows = np.concatenate([np.full(len(idx), g) for g, (idx, _) in enumerate(gallery)]).astype(np.int64)
    cols = np.concatenate([idx for idx, _ in gallery])
    vals = np.concatenate([v for _, v in gallery])
    order = np.argsort(cols, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.searchsorted(cols, np.arange(len(encoded) + 1))
    g_sums = np.array([v.sum() for _, v in gallery])
    result = np.empty((num_query, len(gallery)))
    for p, (q_cols, q_vals) in enumerate(encoded[:num_query]):
        lengths = start[q_cols + 1] - start[q_cols]
        offsets = np.repeat(start[q_cols] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        mins = np.minimum(np.repeat(q_vals, lengths), vals[offsets])
        inter = np.bincount(rows[offsets], weights=mins, minlength=len(gallery))
        result[p] = 1.0 - inter / (q_vals.sum() + g_sums - inter)
    return result


def k_reciprocal_rerank(
    q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Re-ranked distance [Q, G] by k-reciprocal encoding (Zhong et al., CVPR 2017).

    Over all Q + G items with the given distances d: R*(i, k1) is the k1-reciprocal set of i with
    the 1/2 k1 expansion (eq. 3); i's k-reciprocal feature V_i has exp(-d(i, j)) at the members j
    of R*(i, k1), 0 elsewhere (eq. 7); local query expansion replaces V_i by the mean of V over
    the k2 nearest items of i, i itself included (eq. 11; k2 = 1: none); d_J is the Jaccard
    distance of eq. 10 and the result (1 - lambda) d_J + lambda d (eq. 12). Each item counts as
    its own nearest neighbour, and k1, k2 are capped by the number of items. Distances are used
    as given (the authors' code also squares and max-normalises them first).
    """
    q_g, q_q, g_g = (np.asarray(d, dtype=np.float32) for d in (q_g, q_q, g_g))
    num_q, num_g = q_g.shape if q_g.ndim == 2 else (-1, -1)
    if q_q.shape != (num_q, num_q) or g_g.shape != (num_g, num_g):
        raise ValueError(f"expected q_g [Q, G], q_q [Q, Q], g_g [G, G]; got {q_g.shape}, {q_q.shape}, {g_g.shape}")
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1, got {k1}, {k2}, {lambda_value}")
    if num_q == 0 or num_g == 0:
        return q_g.astype(np.float32)
    dist = np.block([[q_q, q_g], [q_g.T, g_g]])
    n = len(dist)
    k1, k2 = min(k1, n - 1), min(k2, n)
    nearest = _nearest(dist, max(k1 + 1, k2))
    encoded = [(m, np.exp(-dist[i, m].astype(np.float64))) for i, m in enumerate(_expanded_sets(nearest, k1))]
    if k2 > 1:
        encoded = [_sparse_mean([encoded[j] for j in nearest[i, :k2]]) for i in range(n)]
    jaccard = _jaccard(encoded, num_q)
    return ((1.0 - lambda_value) * jaccard + lambda_value * q_g).astype(np.float32)
