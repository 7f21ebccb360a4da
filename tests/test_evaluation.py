"""Retrieval metrics against hand-computed values and the Market-1501 same-camera rule."""
from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import chance_metrics, evaluate_rankings, metrics_from_matches


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
    metrics = evaluate_rankings(distmat, np.array([7]), np.array([7, 8, 7]), np.array([1]), np.array([1, 2, 2]), max_rank=3)
    assert metrics.rank1 == 0.0
    assert metrics.map == pytest.approx(0.5)
    # a different-identity sample in the query's camera is kept
    metrics = evaluate_rankings(distmat, np.array([7]), np.array([9, 7, 7]), np.array([1]), np.array([1, 2, 2]), max_rank=3)
    assert metrics.map == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_chance_level_is_match_fraction():
    chance = chance_metrics([np.array([1, 0, 0, 0], bool), np.array([1, 1, 0, 0], bool)])
    assert chance["rank1"] == pytest.approx(0.375)
