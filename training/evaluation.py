"""ReID retrieval metrics as the literature defines them (CMC, mAP, mINP, Market-1501 rule)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpr_model.distance import k_reciprocal_rerank


@dataclass
class RetrievalMetrics:
    """Averages over the queries that have at least one valid match."""

    map: float
    mINP: float
    cmc: np.ndarray
    num_valid_queries: int

    @property
    def rank1(self) -> float:
        """Fraction of valid queries whose first result is a true match."""
        return float(self.cmc[0]) if len(self.cmc) else 0.0

    def as_dict(self) -> dict:
        """mAP, mINP, rank-1/5/10 and the number of valid queries as plain JSON values."""
        ranks = {f"rank{r}": float(self.cmc[r - 1]) for r in (1, 5, 10) if len(self.cmc) >= r}
        return {"map": self.map, "mINP": self.mINP, **ranks, "num_valid_queries": self.num_valid_queries}


def evaluate_rankings(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                      g_camids: np.ndarray, max_rank: int = 50, drop_same_camera: bool = True) -> RetrievalMetrics:
    """CMC / mAP / mINP from a [Q, G] distance matrix (FastReID's / torchreid's ``eval_market1501``).

    Market-1501 rule (``drop_same_camera``): for each query, gallery samples with the query's identity
    AND camera are removed before ranking. Occluded-PoseTrack-ReID keeps them (drop_same_camera=False).
    Queries with no remaining true match are skipped.
    """
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    order = np.argsort(distmat, axis=1, kind="stable")
    ranked_matches = []
    for i in range(distmat.shape[0]):
        ranked = order[i]
        same_id = g_pids[ranked] == q_pids[i]
        keep = ~(same_id & (g_camids[ranked] == q_camids[i])) if drop_same_camera else np.ones(len(ranked), bool)
        ranked_matches.append(same_id[keep])
    return metrics_from_matches(ranked_matches, max_rank)


def evaluate_distances(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                       q_camids: np.ndarray, g_camids: np.ndarray, rerank: bool = False, max_rank: int = 50,
                       drop_same_camera: bool = True) -> RetrievalMetrics:
    """``evaluate_rankings`` of the query-gallery distances, k-reciprocally re-ranked first when ``rerank``.

    Re-ranking (Zhong et al. 2017, default k1 20, k2 6, lambda 0.3) needs the query-query and
    gallery-gallery distances too; they are ignored without it.
    """
    distances = k_reciprocal_rerank(q_g, q_q, g_g) if rerank else q_g
    return evaluate_rankings(distances, q_pids, g_pids, q_camids, g_camids, max_rank, drop_same_camera)


def metrics_from_matches(ranked_matches: list[np.ndarray], max_rank: int = 50) -> RetrievalMetrics:
    """CMC / mAP / mINP from each query's full ranked gallery as booleans (True = same identity).

    The rankings must already exclude the samples the protocol ignores; queries without any
    true match are skipped, as in the literature. Per query: CMC(r) = 1 when a true match is within
    the first r; AP = mean over the true matches of the precision at their rank; INP = number of true
    matches / rank of the last one. Beyond a query's gallery size its CMC stays at 1.
    """
    cmc_sum = np.zeros(max_rank)
    aps, inps = [], []
    for matches in ranked_matches:
        hit_ranks = np.flatnonzero(np.asarray(matches, dtype=bool))
        if len(hit_ranks) == 0:
            continue
        if hit_ranks[0] < max_rank:
            cmc_sum[hit_ranks[0]:] += 1.0
        aps.append(np.mean(np.arange(1, len(hit_ranks) + 1) / (hit_ranks + 1)))
        inps.append(len(hit_ranks) / (hit_ranks[-1] + 1))
    n = len(aps)
    if n == 0:
        return RetrievalMetrics(0.0, 0.0, np.zeros(max_rank), 0)
    return RetrievalMetrics(float(np.mean(aps)), float(np.mean(inps)), cmc_sum / n, n)


def chance_metrics(ranked_matches: list[np.ndarray]) -> dict:
    """Rank-1 and (approximately) mAP expected from a random ranking: the floor a model must beat.

    Both equal the mean fraction of true matches in a gallery (AP of a random ranking tends to it).
    """
    valid = [np.asarray(m, bool) for m in ranked_matches if np.any(m)]
    if not valid:
        return {"rank1": 0.0, "map": 0.0}
    rank1 = float(np.mean([m.mean() for m in valid]))
    return {"rank1": rank1, "map": rank1}
