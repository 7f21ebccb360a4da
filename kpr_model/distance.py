"""KPR test-time distance: visibility-masked mean of per-part euclidean distances (spec section 5).

Search (storage/) and benchmarking (training/) both call this module so their rankings agree. PyTorch is
imported where a distance is computed, not with the module: storage imports it to read a store, which needs
no PyTorch, and `kpr ingest` checks its store in a few seconds because of it.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from kpr_model.embeddings import ReIDEmbeddings, aggregate
from kpr_model.feedback import FeedbackWeights, exemplar_distance, fuse, rejection_penalty

# storage/ may import this module only (ARCHITECTURE.md), so the embedding type, its aggregation
# and the relevance feedback math come with it.
__all__ = [
    "FeedbackWeights",
    "ReIDEmbeddings",
    "aggregate",
    "check_parts",
    "exemplar_distance",
    "fuse",
    "k_reciprocal_rerank",
    "kpr_distance",
    "paired_kpr_distance",
    "part_distance",
    "per_part_distances",
    "rejection_penalty",
]

if TYPE_CHECKING:
    import torch

    ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(value: ArrayLike, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy array or tensor as a tensor on ``device`` (optionally cast to ``dtype``)."""
    import torch

    if not isinstance(value, torch.Tensor):
        value = np.ascontiguousarray(value)
        # A read-only view (a vector column read from the store) is copied: PyTorch warns on wrapping one.
        value = torch.from_numpy(value if value.flags.writeable else value.copy())
    return value.to(device=device, dtype=dtype or value.dtype)


# A distance of at most this many multiply-adds (one query against a search's few thousand candidates: 4M) runs on
# one thread. Shared on 2 cores it saved ~1 ms, but waited up to 20 ms for a core the store's reads held, and then
# its idle OpenMP threads spun on the cores those reads need: at 1M rows, from a cold page cache, a filtered search's
# distance took 21-24 vs 6-7 ms p95 and the top-50 read after it 7.7 vs 6.0 ms p50 (bench/README.md, "Threads").
SINGLE_THREAD_MAX_WORK = 1 << 24


@contextmanager
def _one_thread_if_small(work: int, device: torch.device) -> Iterator[None]:
    """PyTorch's CPU ops in this thread on one thread for the block when ``work`` (multiply-adds) is small.

    OpenMP and MKL keep the setting per thread, restored after the block; PyTorch also starts threads that run their
    first op meanwhile with it, which costs those only speed, and little when requests run concurrently anyway.
    """
    import torch

    threads = torch.get_num_threads()
    if device.type != "cpu" or work > SINGLE_THREAD_MAX_WORK or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    import torch

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

    with _one_thread_if_small(qf.shape[0] * gf.numel(), device):
        return _part_distance(qf, qv, gf, gv, chunk_size, device)


def _part_distance(qf: torch.Tensor, qv: torch.Tensor, gf: torch.Tensor, gv: torch.Tensor, chunk_size: int,
                   device: torch.device) -> torch.Tensor:
    """`part_distance` of checked tensors: the query's on ``device``, the gallery's on the CPU."""
    import torch

    num_q, num_parts = qf.shape[0], qf.shape[1]
    num_g = gf.shape[0]
    result = torch.empty((num_q, num_g), dtype=torch.float32)
    q_sq = torch.linalg.vector_norm(qf, dim=-1).square_()
    q_mask = qv.to(torch.float32)
    max_finite = torch.tensor(float("-inf"))
    missing = False
    for start in range(0, num_g, chunk_size):
        g_feats = gf[start : start + chunk_size].to(device=device, dtype=torch.float32)
        g_mask = gv[start : start + chunk_size].to(device=device, dtype=torch.float32)
        g_sq = torch.linalg.vector_norm(g_feats, dim=-1).square_()  # one pass, no [G, P, D] temporary (4x faster)
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


def kpr_distance(
    query: ReIDEmbeddings,
    gallery: ReIDEmbeddings,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
    parts: Sequence[int] | None = None,
    holistic_weight: float = 1.0,
) -> np.ndarray:
    """KPR distance [Q, G] between two embedding batches, on their holistic + parts test stacks.

    With ``parts`` (0-based indices) only those part embeddings and their visibility count, and the
    holistic entry is left out: "find these boots" compares the feet and nothing else. The holistic
    entry counts ``holistic_weight`` times in the mean (1: KPR's distance; a hybrid model's
    holistic entry is a global model's vector, which it may trust more).
    """
    if parts is not None:
        index = check_parts(parts, query.num_parts)
        return part_distance(query.parts[:, index], query.visibility[:, index], gallery.parts[:, index],
                             gallery.visibility[:, index], chunk_size=chunk_size, device=device).numpy()
    # The holistic entry is always visible, so the mean over the stack's mutually visible entries is
    # (w holistic + parts' mean x n) / (w + n), n the mutually visible parts: for w = 1 the same figure as part_distance
    # of test_stack()s, without copying the gallery into a [G, K+1, D] stack (a third of a 4,000-row re-rank).
    holistic = part_distance(query.global_emb[:, None], np.ones((len(query), 1), np.float32),
                             gallery.global_emb[:, None], np.ones((len(gallery), 1), np.float32),
                             chunk_size=chunk_size, device=device).numpy()
    mean_of_parts = part_distance(query.parts, query.visibility, gallery.parts, gallery.visibility,
                                  chunk_size=chunk_size, device=device).numpy()
    shared = (query.visibility > 0).astype(np.float32) @ (gallery.visibility > 0).astype(np.float32).T
    return (holistic_weight * holistic + mean_of_parts * shared) / (holistic_weight + shared)


def paired_kpr_distance(first: ReIDEmbeddings, second: ReIDEmbeddings, chunk_size: int = 16_384,
                        holistic_weight: float = 1.0) -> np.ndarray:
    """KPR distance [N] between row i of ``first`` and row i of ``second``: the diagonal of kpr_distance (with its
    ``holistic_weight``) without the [N, N] matrix, for scoring many chosen pairs (linking) at once.

    Holistic + parts, visibility binarised, mean over mutually visible entries; the holistic entry is always
    visible, so every pair has one.
    """
    if len(first) != len(second):
        raise ValueError(f"paired_kpr_distance takes two batches of one length, got {len(first)} and {len(second)}")
    result = np.empty(len(first), np.float32)
    for start in range(0, len(first), chunk_size):
        rows = slice(start, start + chunk_size)
        a_feats, a_vis = first.select(rows).test_stack()
        b_feats, b_vis = second.select(rows).test_stack()
        mutual = ((a_vis > 0) & (b_vis > 0)).astype(np.float32)
        mutual[:, 0] *= holistic_weight
        per_part = np.linalg.norm(a_feats - b_feats, axis=-1)
        result[rows] = (per_part * mutual).sum(axis=1) / mutual.sum(axis=1)
    return result


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


def _normalised(dist: np.ndarray) -> np.ndarray:
    """d' of the standard re-ranking, in place: row i is column i of d^2 divided by that column's maximum.

    A column of zeros stays zero. The result is a transposed view of ``dist``, which it overwrites.
    """
    np.square(dist, out=dist)
    peak = dist.max(axis=0)
    dist /= np.where(peak > 0, peak, 1.0).astype(dist.dtype)
    return dist.T


def _nearest(dist: np.ndarray, count: int, block: int = 1024) -> np.ndarray:
    """Indices [N, min(count, N)] of each item's nearest items: itself first, then by distance, ties by index.

    Rows are ranked ``block`` at a time, so only a block of the [N, N] matrix is ever copied.
    """
    n = len(dist)
    count = min(count, n)
    out = np.empty((n, count), dtype=np.int64)
    for start in range(0, n, block):
        ranked = np.array(dist[start : start + block], dtype=np.float64)
        own = np.arange(len(ranked))
        ranked[own, start + own] = -np.inf
        if count < n:
            candidates = np.argpartition(ranked, count - 1, axis=1)[:, :count]
        else:
            candidates = np.broadcast_to(np.arange(n), ranked.shape)
        values = np.take_along_axis(ranked, candidates, axis=1)
        order = np.lexsort((candidates, values), axis=1)
        out[start : start + block] = np.take_along_axis(candidates, order, axis=1)
    return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated index ranges starts[i] .. starts[i] + lengths[i] - 1, in order."""
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def _row_starts(rows: np.ndarray, n: int) -> np.ndarray:
    """Where each row 0..n-1 begins in sorted row indices, and the end: [n + 1]."""
    return np.searchsorted(rows, np.arange(n + 1))


def _reciprocal_pairs(nearest: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """R(i, k) for every item i as (i, j) index pairs sorted by i: the j of N(i, k) that have i in N(j, k).

    N(i, k) is the first k + 1 entries of i's ranking (i itself and its k nearest others), so every
    R(i, k) holds i itself.
    """
    top = nearest[:, : k + 1]
    items = np.arange(len(top))
    mutual = (top[top] == items[:, None, None]).any(axis=2)
    return np.broadcast_to(items[:, None], top.shape)[mutual], top[mutual]


def _expanded_pairs(nearest: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """R*(i, k1) for every item i as (i, j) index pairs sorted by i, then j.

    R*(i, k1) is R(i, k1) plus R(c, round(k1 / 2)) of each c in it with over 2/3 of its members in R(i, k1).
    """
    n = len(nearest)
    rows, cols = _reciprocal_pairs(nearest, k1)
    half_rows, half_cols = _reciprocal_pairs(nearest, int(np.around(k1 / 2)))
    half_start = _row_starts(half_rows, n)
    sizes = np.diff(half_start)[cols]
    owner = np.repeat(np.arange(len(rows)), sizes)
    candidates = rows[owner] * n + half_cols[_ranges(half_start[cols], sizes)]
    base = rows * n + cols
    shared = np.bincount(owner, weights=np.isin(candidates, base), minlength=len(rows))
    keys = np.unique(np.concatenate([base, candidates[(shared > 2.0 / 3.0 * sizes)[owner]]]))
    return keys // n, keys % n


def _expanded_queries(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                      neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse V (rows sorted) with each row i replaced by the mean of the rows neighbours[i] [N, k]."""
    n, k = neighbours.shape
    start = _row_starts(rows, n)
    sizes = np.diff(start)[neighbours.ravel()]
    taken = _ranges(start[neighbours.ravel()], sizes)
    keys, inverse = np.unique(np.repeat(np.arange(n), k).repeat(sizes) * n + cols[taken], return_inverse=True)
    return keys // n, keys % n, np.bincount(inverse, weights=values[taken]) / k


def _jaccard(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, num_query: int, n: int) -> np.ndarray:
    """1 - sum_j min(V_p,j, V_g,j) / sum_j max(V_p,j, V_g,j) for every query p and gallery item g [Q, G].

    V [n, n] is sparse (rows sorted) over the Q queries then the G gallery items. The gallery entries are
    indexed by column, so each query only visits those that share one of its non-zero columns;
    sum max = sum V_p + sum V_g - sum min.
    """
    in_gallery = rows >= num_query
    order = np.argsort(cols[in_gallery], kind="stable")
    g_rows, g_cols, g_values = (a[in_gallery][order] for a in (rows - num_query, cols, values))
    num_gallery = n - num_query
    g_sums = np.bincount(g_rows, weights=g_values, minlength=num_gallery)
    col_start = _row_starts(g_cols, n)
    row_start = _row_starts(rows, num_query)
    result = np.empty((num_query, num_gallery))
    for p in range(num_query):
        q_cols, q_values = cols[row_start[p] : row_start[p + 1]], values[row_start[p] : row_start[p + 1]]
        sizes = col_start[q_cols + 1] - col_start[q_cols]
        taken = _ranges(col_start[q_cols], sizes)
        inter = np.bincount(g_rows[taken], weights=np.minimum(np.repeat(q_values, sizes), g_values[taken]),
                            minlength=num_gallery)
        result[p] = 1.0 - inter / (q_values.sum() + g_sums - inter)
    return result


def k_reciprocal_rerank(
    q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Re-ranked distance [Q, G]: the standard k-reciprocal re-ranking (Zhong et al., CVPR 2017), as torchreid's.

    Over all Q + G items, d' is the squared distance of ``_normalised`` (each item's distances to
    all others divided by their maximum). Each item's ranking puts itself first (as d'(i, i) = 0
    does), then the others by d', ties by index; N(i, k) is its first k + 1 items and R(i, k) the
    members j of N(i, k) with i in N(j, k) (eq. 2). R*(i, k1) is R(i, k1) plus every R(c, round(k1/2))
    of c in R(i, k1) with more than 2/3 of its members in R(i, k1) (eq. 3). V_i holds exp(-d'(i, j))
    at the members j of R*(i, k1), scaled to sum 1, 0 elsewhere (eq. 7); local query expansion
    replaces V_i by the mean of V over i's first k2 items (eq. 11; k2 = 1: none). d_J is the
    Jaccard distance of eq. 10 and the result (1 - lambda) d_J + lambda d' (eq. 12). Sizes beyond
    the number of items mean all items.
    """
    q_g, q_q, g_g = (np.asarray(d, dtype=np.float32) for d in (q_g, q_q, g_g))
    num_q, num_g = q_g.shape if q_g.ndim == 2 else (-1, -1)
    if q_q.shape != (num_q, num_q) or g_g.shape != (num_g, num_g):
        raise ValueError(f"expected q_g [Q, G], q_q [Q, Q], g_g [G, G]; got {q_g.shape}, {q_q.shape}, {g_g.shape}")
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1, got {k1}, {k2}, {lambda_value}")
    if num_q == 0 or num_g == 0:
        return q_g
    dist = _normalised(np.block([[q_q, q_g], [q_g.T, g_g]]))
    nearest = _nearest(dist, max(k1 + 1, k2))
    rows, cols = _expanded_pairs(nearest, k1)
    weights = np.exp(-dist[rows, cols].astype(np.float64))
    values = weights / np.bincount(rows, weights=weights)[rows]
    if k2 > 1:
        rows, cols, values = _expanded_queries(rows, cols, values, nearest[:, :k2])
    jaccard = _jaccard(rows, cols, values, num_q, len(dist))
    return ((1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]).astype(np.float32)
