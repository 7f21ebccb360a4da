"""KPR part distance against a brute-force reference of spec section 5; part queries, per-part distances,
tracklet aggregation, and k-reciprocal re-ranking against a reference written from Zhong et al. 2017."""
from __future__ import annotations

import functools
import time

import numpy as np
import pytest
import torch

from kpr_model.distance import aggregate, k_reciprocal_rerank, kpr_distance, part_distance, per_part_distances
from kpr_model.embeddings import ReIDEmbeddings
from support import random_unit


def _reference(qf: np.ndarray, qv: np.ndarray, gf: np.ndarray, gv: np.ndarray) -> np.ndarray:
    """Triple-loop float64 reading of the spec: masked mean of part distances, max + 1 fill."""
    out = np.full((qf.shape[0], gf.shape[0]), np.nan)
    for i in range(qf.shape[0]):
        for j in range(gf.shape[0]):
            total, weight = 0.0, 0.0
            for k in range(qf.shape[1]):
                w = np.sqrt(float(qv[i, k] > 0) * float(gv[j, k] > 0))
                diff = qf[i, k].astype(np.float64) - gf[j, k].astype(np.float64)
                total += w * np.sqrt(np.dot(diff, diff))
                weight += w
            if weight > 0:
                out[i, j] = total / weight
    finite = out[np.isfinite(out)]
    fill = finite.max() + 1.0 if finite.size else 1.0
    return np.where(np.isnan(out), fill, out)


def _random_case(seed: int, q: int = 7, g: int = 29, p: int = 5, d: int = 16):
    """Random features and continuous visibility with some all-invisible query and gallery rows."""
    rng = np.random.default_rng(seed)
    qf, gf = random_unit(rng, q, p, d), random_unit(rng, g, p, d)
    qv = rng.uniform(0, 1, (q, p)).astype(np.float32) * (rng.uniform(0, 1, (q, p)) > 0.4)
    gv = rng.uniform(0, 1, (g, p)).astype(np.float32) * (rng.uniform(0, 1, (g, p)) > 0.4)
    qv[0] = 0.0
    gv[3] = 0.0
    return qf, qv, gf, gv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_bruteforce_reference(seed: int) -> None:
    qf, qv, gf, gv = _random_case(seed)
    got = part_distance(qf, qv, gf, gv)
    assert isinstance(got, torch.Tensor) and got.shape == (7, 29)
    np.testing.assert_allclose(got.numpy(), _reference(qf, qv, gf, gv), atol=1e-4)


def test_all_invisible_pairs_get_global_max_plus_one() -> None:
    qf, qv, gf, gv = _random_case(4)
    got = part_distance(qf, qv, gf, gv).numpy()
    mutual = (qv > 0).astype(int) @ (gv > 0).astype(int).T
    assert np.all(got[0] == got[mutual > 0].max() + 1.0)
    assert np.all(got[:, 3] == got[mutual > 0].max() + 1.0)


def test_no_visible_pair_anywhere_fills_with_one() -> None:
    qf, _, gf, _ = _random_case(5, q=2, g=4)
    got = part_distance(qf, np.zeros((2, 5)), gf, np.zeros((4, 5)))
    assert torch.equal(got, torch.ones(2, 4))


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 10_000])
def test_chunked_equals_unchunked(chunk_size: int) -> None:
    qf, qv, gf, gv = _random_case(6, g=41)
    full = part_distance(qf, qv, gf, gv, chunk_size=10_000)
    chunked = part_distance(torch.from_numpy(qf), torch.from_numpy(qv), gf, gv, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=0)


def test_a_small_distance_runs_on_one_thread_and_leaves_the_setting_as_it_was(monkeypatch) -> None:
    """A search's re-rank (below SINGLE_THREAD_MAX_WORK) runs single-threaded; a serving process keeps its threads."""
    import kpr_model.distance as distance

    qf, qv, gf, gv = _random_case(11, q=1, g=64)
    seen = []
    real = distance._part_distance
    monkeypatch.setattr(distance, "_part_distance", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small = part_distance(qf, qv, gf, gv)
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(distance, "SINGLE_THREAD_MAX_WORK", 0)  # the same work counted as large
        large = part_distance(qf, qv, gf, gv)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 2]
    torch.testing.assert_close(small, large, atol=1e-6, rtol=0)


def test_visibility_is_binarised() -> None:
    qf, qv, gf, gv = _random_case(7)
    torch.testing.assert_close(
        part_distance(qf, qv, gf, gv), part_distance(qf, (qv > 0).astype(np.float32), gf, gv > 0)
    )


def test_identical_visible_parts_give_zero_despite_other_parts() -> None:
    rng = np.random.default_rng(8)
    k, d = 6, 32
    query = ReIDEmbeddings(random_unit(rng, 1, d), random_unit(rng, 1, k, d), np.ones((1, k), np.float32))
    query.visibility[0, 4:] = 0.0
    twin_parts = query.parts.copy()
    twin_parts[0, 4:] = random_unit(rng, 2, d)
    twin = ReIDEmbeddings(query.global_emb.copy(), twin_parts, np.ones((1, k), np.float32))
    others = ReIDEmbeddings(random_unit(rng, 20, d), random_unit(rng, 20, k, d), np.ones((20, k), np.float32))
    gallery = ReIDEmbeddings.concat([others, twin])
    dist = kpr_distance(query, gallery)
    assert dist.shape == (1, 21) and dist.dtype == np.float32
    assert dist[0, -1] == pytest.approx(0.0, abs=1e-3)
    assert int(dist[0].argmin()) == 20
    assert dist[0, :20].min() > 0.5


def test_shape_mismatch_is_refused() -> None:
    qf, qv, gf, gv = _random_case(9)
    with pytest.raises(ValueError, match="differ"):
        part_distance(qf, qv, gf[:, :4], gv[:, :4])
    with pytest.raises(ValueError, match="visibility"):
        part_distance(qf, qv[:, :3], gf, gv)


def _embeddings(rng: np.random.Generator, n: int, k: int = 6, d: int = 8) -> ReIDEmbeddings:
    """Random unit embeddings with random visibility, some parts invisible."""
    vis = rng.uniform(0.1, 1.0, (n, k)).astype(np.float32) * (rng.uniform(0, 1, (n, k)) > 0.3)
    return ReIDEmbeddings(random_unit(rng, n, d), random_unit(rng, n, k, d), vis)


def test_part_query_uses_only_the_chosen_parts() -> None:
    rng = np.random.default_rng(10)
    query, gallery = _embeddings(rng, 3), _embeddings(rng, 9)
    chosen = [4, 1]
    got = kpr_distance(query, gallery, parts=chosen)
    sub = sorted(chosen)
    expected = _reference(query.parts[:, sub], query.visibility[:, sub], gallery.parts[:, sub], gallery.visibility[:, sub])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    changed = gallery.parts.copy()
    changed[:, [0, 2, 3, 5]] = random_unit(rng, 9, 4, 8)
    other = ReIDEmbeddings(random_unit(rng, 9, 8), changed, gallery.visibility)
    np.testing.assert_allclose(kpr_distance(query, other, parts=chosen), got, atol=1e-6)
    with pytest.raises(ValueError, match=r"valid part indices are 0\.\.5"):
        kpr_distance(query, gallery, parts=[6])


def test_per_part_distances_are_nan_where_not_mutually_visible() -> None:
    rng = np.random.default_rng(11)
    query, gallery = _embeddings(rng, 1), _embeddings(rng, 5)
    got = per_part_distances(query, gallery)
    mutual = (query.visibility[0] > 0) & (gallery.visibility > 0)
    assert got.shape == (5, 6) and np.array_equal(np.isnan(got), ~mutual)
    expected = np.linalg.norm(gallery.parts - query.parts[0], axis=-1)
    np.testing.assert_allclose(got[mutual], expected[mutual], atol=1e-6)


def test_aggregate_weights_parts_by_visibility() -> None:
    rng = np.random.default_rng(12)
    views = _embeddings(rng, 4)
    views.visibility[:, 0] = [0.0, 0.0, 1.0, 0.0]
    views.visibility[:, 1] = 0.0
    one = aggregate(views)
    assert len(one) == 1 and one.parts.shape == (1, 6, 8)
    np.testing.assert_allclose(one.parts[0, 0], views.parts[2, 0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(one.parts[0], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one.global_emb[0], _normalised_mean(views.global_emb), atol=1e-6)
    np.testing.assert_array_equal(one.visibility[0], views.visibility.max(axis=0))


def _normalised_mean(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=0)
    return mean / np.linalg.norm(mean)


def test_a_crop_without_visible_parts_is_ranked_by_its_foreground_embedding() -> None:
    """The holistic entry is always visible, as officially: a query whose part maps are all background still
    compares its foreground embedding instead of getting one constant distance to everything."""
    rng = np.random.default_rng(7)
    query = ReIDEmbeddings(random_unit(rng, 1, 16), random_unit(rng, 1, 4, 16), np.zeros((1, 4), np.float32))
    gallery = ReIDEmbeddings(random_unit(rng, 5, 16), random_unit(rng, 5, 4, 16), np.ones((5, 4), np.float32))
    gallery.visibility[0] = 0.0
    np.testing.assert_allclose(kpr_distance(query, gallery)[0],
                               np.linalg.norm(gallery.global_emb - query.global_emb, axis=1), atol=1e-5)
    np.testing.assert_allclose(kpr_distance(gallery, gallery)[0, 1:],
                               np.linalg.norm(gallery.global_emb[1:] - gallery.global_emb[0], axis=1), atol=1e-5)


def _rerank_reference(q_g, q_q, g_g, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017 read literally with torchreid's scaling, dense matrices and Python sets (float64).

    d'(i, j) = d(j, i)^2 / max_m d(m, i)^2 (each item's squared distances over their maximum);
    N(i, k): i and its k nearest others by d'; R(i, k) = {j in N(i, k) : i in N(j, k)} (eq. 2);
    R* adds R(c, round(k/2)) for c in R(i, k) when |R(i, k) & R(c, round(k/2))| > 2/3 |R(c, round(k/2))|
    (eq. 3); V_i,j = exp(-d'(i, j)) on R*, over its sum (eq. 7); V_i = mean of V over i and its k2 - 1
    nearest (eq. 11); d_J = 1 - sum min / sum max (eq. 10); d* = (1 - lam) d_J + lam d' (eq. 12).
    """
    squared = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64) ** 2
    dist = (squared / squared.max(axis=0)).T
    n, num_q = len(dist), len(q_q)

    @functools.cache
    def near(i: int, k: int) -> frozenset[int]:
        others = sorted((j for j in range(n) if j != i), key=lambda j: dist[i, j])
        return frozenset({i, *others[:k]})

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in near(i, k) if i in near(j, k)}

    v = np.zeros((n, n))
    for i in range(n):
        base = reciprocal(i, k1)
        star = set(base)
        for c in base:
            half = reciprocal(c, round(k1 / 2))
            if len(half & base) > 2 / 3 * len(half):
                star |= half
        total = sum(np.exp(-dist[i, j]) for j in star)
        for j in star:
            v[i, j] = np.exp(-dist[i, j]) / total
    v = np.stack([v[sorted(near(i, k2 - 1))].mean(axis=0) for i in range(n)])
    jaccard = np.array([[1 - np.minimum(v[p], v[num_q + g]).sum() / np.maximum(v[p], v[num_q + g]).sum()
                         for g in range(q_g.shape[1])] for p in range(num_q)])
    return (1 - lam) * jaccard + lam * dist[:num_q, num_q:]


def _clustered_distances(rng: np.random.Generator, people: int, views: int) -> np.ndarray:
    """Euclidean distances between ``views`` noisy views of each of ``people`` random points."""
    points = rng.standard_normal((people * views, 3)) + np.repeat(3 * rng.standard_normal((people, 3)), views, axis=0)
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


@pytest.mark.parametrize(("seed", "k1", "k2", "lam"),
                         [(0, 20, 6, 0.3), (1, 5, 1, 0.3), (2, 4, 3, 0.6), (3, 50, 50, 0.0), (4, 7, 2, 1.0)])
def test_k_reciprocal_rerank_matches_the_paper_reference(seed: int, k1: int, k2: int, lam: float) -> None:
    rng = np.random.default_rng(seed)
    dist = _clustered_distances(rng, 6, 6)
    q = 5
    got = k_reciprocal_rerank(dist[:q, q:], dist[:q, :q], dist[q:, q:], k1=k1, k2=k2, lambda_value=lam)
    expected = _rerank_reference(dist[:q, q:], dist[:q, :q], dist[q:, q:], k1, k2, lam)
    assert got.shape == (q, 31)
    assert np.abs(got - expected).max() <= 1e-4


def test_k_reciprocal_rerank_matches_the_reference_on_uniform_random_distances() -> None:
    """Random (not even symmetric) distances among 90 items, the paper's settings: the scaling runs per column."""
    rng = np.random.default_rng(5)
    dist = rng.uniform(0.1, 2.0, (90, 90)).astype(np.float32)
    np.fill_diagonal(dist, 0.0)
    q = 10
    got = k_reciprocal_rerank(dist[:q, q:], dist[:q, :q], dist[q:, q:])
    expected = _rerank_reference(dist[:q, q:], dist[:q, :q], dist[q:, q:], 20, 6, 0.3)
    assert np.abs(got - expected).max() <= 1e-4


def test_k_reciprocal_rerank_is_quick_on_a_search_candidate_pool() -> None:
    """One query against the 500 candidates a search re-ranks: tens of milliseconds, well under a second."""
    dist = _clustered_distances(np.random.default_rng(6), 167, 3)
    start = time.perf_counter()
    k_reciprocal_rerank(dist[:1, 1:], dist[:1, :1], dist[1:, 1:])
    assert time.perf_counter() - start < 1.0


def test_k_reciprocal_rerank_demotes_a_close_but_not_reciprocal_neighbour() -> None:
    """Query at the origin; its nearest item sits next to a tight crowd, the true matches a bit farther."""
    rng = np.random.default_rng(4)
    true = np.array([1.0, 0.0]) + rng.uniform(-0.05, 0.05, (4, 2))
    crowd = np.array([0.0, 1.5]) + rng.uniform(-0.05, 0.05, (5, 2))
    gallery = np.concatenate([[[0.0, 0.95]], true, crowd])
    dist = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
    query = np.zeros((1, 2))
    q_g = dist(query, gallery)
    assert q_g[0].argmin() == 0
    reranked = k_reciprocal_rerank(q_g, dist(query, query), dist(gallery, gallery), k1=5, k2=3)
    assert set(np.argsort(reranked[0])[:4]) == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="q_g"):
        k_reciprocal_rerank(q_g, dist(query, query), dist(gallery, gallery)[:3, :3])
