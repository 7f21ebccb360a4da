"""KPR part distance against a brute-force reference of spec section 5."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kpr_model.distance import kpr_distance, part_distance
from kpr_model.embeddings import ReIDEmbeddings


def _normalised(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random float32 vectors, L2-normalised along the last axis."""
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


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
    qf, gf = _normalised(rng, q, p, d), _normalised(rng, g, p, d)
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


def test_visibility_is_binarised() -> None:
    qf, qv, gf, gv = _random_case(7)
    torch.testing.assert_close(
        part_distance(qf, qv, gf, gv), part_distance(qf, (qv > 0).astype(np.float32), gf, gv > 0)
    )


def test_identical_visible_parts_give_zero_despite_other_parts() -> None:
    rng = np.random.default_rng(8)
    k, d = 6, 32
    query = ReIDEmbeddings(_normalised(rng, 1, d), _normalised(rng, 1, k, d), np.ones((1, k), np.float32))
    query.visibility[0, 4:] = 0.0
    twin_parts = query.parts.copy()
    twin_parts[0, 4:] = _normalised(rng, 2, d)
    twin = ReIDEmbeddings(query.global_emb.copy(), twin_parts, np.ones((1, k), np.float32))
    others = ReIDEmbeddings(_normalised(rng, 20, d), _normalised(rng, 20, k, d), np.ones((20, k), np.float32))
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
