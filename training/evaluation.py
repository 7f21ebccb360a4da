"""The ReID evaluation protocol, in one place: rank with the dataset's camera rule, optionally re-rank, score.

Metrics as the literature defines them (CMC, mAP, mINP; FastReID's / torchreid's ``eval_market1501``).
The benchmark (training/benchmark.py) scores every method here, and the held-out evaluation after
training is the benchmark's prompted mode.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class GroundTruth:
    """Identity and camera of every query and gallery crop, and the dataset's same-camera rule.

    Market-1501 rule (``drop_same_camera``): for each query, gallery samples with the query's identity
    AND camera are left out of its ranking. Occluded-PoseTrack-ReID keeps them (drop_same_camera=False).
    """

    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    drop_same_camera: bool = True


@dataclass
class Evaluation:
    """A [Q, G] distance matrix under the protocol: each query's ranking, the metrics and the chance floor.

    ``rankings`` hold each query's gallery indices from nearest to farthest, without the samples the
    protocol ignores. ``query_ap`` and ``query_rank1`` hold each query's own AP and rank-1 hit (NaN
    without a valid match), for paired comparisons of methods.
    """

    distances: np.ndarray
    rankings: list[np.ndarray]
    metrics: RetrievalMetrics
    chance: dict
    query_ap: np.ndarray
    query_rank1: np.ndarray

    def summary(self) -> dict:
        """JSON-able figures: mAP, mINP, rank-1/5/10, valid queries, the CMC curve, the chance floor, per-query AP/rank-1."""
        def listed(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else round(float(v), 4) for v in values]

        return {**self.metrics.as_dict(), "cmc": [round(float(v), 6) for v in self.metrics.cmc],
                "chance_rank1": self.chance["rank1"], "chance_map": self.chance["map"],
                "query_ap": listed(self.query_ap), "query_rank1": listed(self.query_rank1)}


def evaluate(distances: np.ndarray, truth: GroundTruth) -> Evaluation:
    """Rank the gallery for each query under ``truth``'s camera rule and score the rankings (CMC up to rank 50)."""
    order = np.argsort(distances, axis=1, kind="stable")
    q_pids, g_pids, q_camids, g_camids = truth.q_pids, truth.g_pids, truth.q_camids, truth.g_camids
    if truth.drop_same_camera:
        rankings = [row[~((g_pids[row] == q_pids[i]) & (g_camids[row] == q_camids[i]))] for i, row in enumerate(order)]
    else:
        rankings = list(order)
    matches = [g_pids[row] == q_pids[i] for i, row in enumerate(rankings)]
    each = [metrics_from_matches([m]) if m.any() else None for m in matches]
    query_ap = np.array([m.map if m else np.nan for m in each])
    query_rank1 = np.array([m.rank1 if m else np.nan for m in each])
    metrics, chance = metrics_from_matches(matches), chance_metrics(matches)
    return Evaluation(distances, rankings, metrics, chance, query_ap, query_rank1)


def evaluate_embeddings(distance: Callable[[Any, Any], np.ndarray], query: Any, gallery: Any, truth: GroundTruth,
                        rerank: bool = False) -> list[Evaluation]:
    """``evaluate`` of ``distance(query, gallery)``, then also of its k-reciprocal re-ranking when ``rerank``.

    Re-ranking (Zhong et al. 2017, default k1 20, k2 6, lambda 0.3) uses the query-query and
    gallery-gallery distances too.
    """
    distances = distance(query, gallery)
    evaluations = [evaluate(distances, truth)]
    if rerank:
        reranked = k_reciprocal_rerank(distances, distance(query, query), distance(gallery, gallery))
        evaluations.append(evaluate(reranked, truth))
    return evaluations


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
