"""Retrieval metrics against hand-computed values and the Market-1501 same-camera rule."""
from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import GroundTruth, chance_metrics, evaluate, evaluate_embeddings, metrics_from_matches


def test_ap_cmc_minp_by_hand():
    # ranked relevance: hit at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4
    metrics = metrics_from_matches([np.array([0, 1, 0, 1, 0], bool)], max_rank=5)
    assert metrics.map == pytest.approx(0.5)
    assert metrics.mINP == pytest.approx(0.5)
    assert metrics.cmc.tolist() == [0, 1, 1, 1, 1]
    assert metrics.rank1 == 0.0


def test_queries_without_match_are_skipped():
    metrics = metrics_from_matches([np.array([1, 0], bool), np.array([0, 0], bool)], max_rank=2)
    assert metrics.num_valid_queries == 1 and metrics.map == 1.0


def test_market_rule_ignores_same_identity_same_camera():
    # gallery 0: same id, same camera (must be ignored); gallery 1: other id; gallery 2: same id, other camera
    distmat = np.array([[0.1, 0.2, 0.3]])
    truth = GroundTruth(np.array([7]), np.array([7, 8, 7]), np.array([1]), np.array([1, 2, 2]))
    metrics = evaluate(distmat, truth).metrics
    assert metrics.rank1 == 0.0
    assert metrics.map == pytest.approx(0.5)
    # a different-identity sample in the query's camera is kept
    truth = GroundTruth(np.array([7]), np.array([9, 7, 7]), np.array([1]), np.array([1, 2, 2]))
    metrics = evaluate(distmat, truth).metrics
    assert metrics.map == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_chance_level_is_match_fraction():
    chance = chance_metrics([np.array([1, 0, 0, 0], bool), np.array([1, 1, 0, 0], bool)])
    assert chance["rank1"] == pytest.approx(0.375)


# Gallery (pid, camera): g0 (1, 0), g1 (2, 1), g2 (1, 1), g3 (3, 0), g4 (1, 2), g5 (2, 0).
G_PIDS, G_CAMS = np.array([1, 2, 1, 3, 1, 2]), np.array([0, 1, 1, 0, 2, 0])
Q_PIDS, Q_CAMS = np.array([1, 2, 3, 9]), np.array([0, 1, 0, 0])
DISTANCES = np.array([
    [0.1, 0.4, 0.3, 0.2, 0.5, 0.6],  # q0: its nearest true match g0 shares its camera
    [0.1, 0.05, 0.3, 0.4, 0.5, 0.2],  # q1: same, with g1
    [0.1, 0.2, 0.4, 0.3, 0.5, 0.6],  # q2: its only true match g3 shares its camera
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # q3: identity absent from the gallery
])


def test_market_rule_by_hand_on_a_tiny_gallery():
    # After dropping same-identity same-camera samples: q0 ranks [F, T, F, T, F] (AP (1/2 + 2/4) / 2, INP 2/4),
    # q1 ranks [F, T, F, F, F] (AP 1/2, INP 1/2); q2 and q3 have no valid match and are skipped.
    metrics = evaluate(DISTANCES, GroundTruth(Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)).metrics
    assert metrics.num_valid_queries == 2
    assert metrics.map == pytest.approx(0.5) and metrics.mINP == pytest.approx(0.5)
    assert metrics.cmc[:5].tolist() == [0, 1, 1, 1, 1]


def test_same_camera_matches_count_when_asked_as_in_occluded_posetrack():
    # Nothing dropped: q0 ranks [T, F, T, F, T, F] (AP (1 + 2/3 + 3/5) / 3 = 34/45, INP 3/5),
    # q1 [T, F, T, F, F, F] (AP (1 + 2/3) / 2, INP 2/3), q2 [F, F, T, ...] (AP 1/3, INP 1/3); q3 skipped.
    metrics = evaluate(DISTANCES, GroundTruth(Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, drop_same_camera=False)).metrics
    assert metrics.num_valid_queries == 3
    assert metrics.map == pytest.approx((34 / 45 + 5 / 6 + 1 / 3) / 3)
    assert metrics.mINP == pytest.approx((3 / 5 + 2 / 3 + 1 / 3) / 3)
    assert metrics.cmc[:3] == pytest.approx([2 / 3, 2 / 3, 1])


def _fastreid_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """FastReID's eval_market1501 in its own cumulative-sum form, to cross-check on random data."""
    indices = np.argsort(distmat, axis=1)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(len(q_pids)):
        order = indices[q]
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        raw = (g_pids[order][keep] == q_pids[q]).astype(float)
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.flatnonzero(raw).max()
        all_inp.append(cmc[last] / (last + 1))
        all_ap.append((cmc / np.arange(1, len(raw) + 1) * raw).sum() / raw.sum())
        all_cmc.append(np.minimum(cmc, 1)[:max_rank])
    return np.mean(all_ap), np.mean(all_inp), np.mean(all_cmc, axis=0)


def test_metrics_equal_fastreid_on_random_rankings():
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 8, 30), rng.integers(0, 8, 60)
    q_cams, g_cams = rng.integers(0, 3, 30), rng.integers(0, 3, 60)
    distmat = rng.random((30, 60))
    ap, inp, cmc = _fastreid_reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    metrics = evaluate(distmat, GroundTruth(q_pids, g_pids, q_cams, g_cams)).metrics
    assert metrics.map == pytest.approx(ap) and metrics.mINP == pytest.approx(inp)
    np.testing.assert_allclose(metrics.cmc[:10], cmc)


def test_k_reciprocal_rerank_fixes_a_close_but_not_reciprocal_distractor():
    """Query at the origin; the nearest gallery item (another identity) sits next to a crowd of its own kind."""
    rng = np.random.default_rng(0)
    true = np.array([1.0, 0.0]) + rng.uniform(-0.05, 0.05, (8, 2))
    crowd = np.array([0.0, 1.5]) + rng.uniform(-0.05, 0.05, (25, 2))
    gallery, query = np.concatenate([[[0.0, 0.95]], true, crowd]), np.zeros((1, 2))
    dist = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
    g_pids = np.array([2] + [1] * 8 + [2] * 25)
    truth = GroundTruth(np.array([1]), g_pids, np.array([0]), np.ones(len(gallery), int))
    plain, reranked = (evaluation.metrics for evaluation in evaluate_embeddings(dist, query, gallery, truth, rerank=True))
    assert plain.rank1 == 0.0 and plain.map == pytest.approx(np.mean(np.arange(1, 9) / np.arange(2, 10)))
    assert reranked.rank1 == 1.0 and reranked.map == pytest.approx(1.0)
