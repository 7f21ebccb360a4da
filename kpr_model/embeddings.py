"""The model's product-facing output: what a person crop becomes once KPR has seen it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ReIDEmbeddings:
    """KPR embeddings of N person crops, as numpy arrays ready for storage and search.

    global_emb: [N, D] float32, L2-normalised holistic embedding (the BN-foreground embedding of
        the official test config); the ANN vector of the store.
    parts: [N, K, D] float32, L2-normalised part embeddings.
    visibility: [N, K] float32 in [0, 1]; 0 means the part won no pixel of the part attention
        maps (the spec's binary visibility is ``visibility > 0``), otherwise the part's peak
        probability over the pixels it wins.
    """

    global_emb: np.ndarray
    parts: np.ndarray
    visibility: np.ndarray

    def __len__(self) -> int:
        return int(self.global_emb.shape[0])

    @property
    def num_parts(self) -> int:
        return int(self.parts.shape[1])

    @property
    def dim(self) -> int:
        return int(self.global_emb.shape[1])

    def test_stack(self) -> tuple[np.ndarray, np.ndarray]:
        """Holistic + part embeddings stacked as the spec's test embeddings: [N, K+1, D], [N, K+1].

        The holistic entry is always visible: the official foreground visibility is a max over all
        part-map channels, background included, so it is never 0, and a crop whose part maps are
        all background is still ranked by its foreground embedding.
        """
        feats = np.concatenate([self.global_emb[:, None, :], self.parts], axis=1, dtype=np.float32)
        vis = np.concatenate([np.ones((len(self), 1), np.float32), self.visibility], axis=1, dtype=np.float32)
        return feats, vis

    def select(self, index) -> "ReIDEmbeddings":
        """Rows at ``index`` (int array, slice or boolean mask) as a new ReIDEmbeddings."""
        return ReIDEmbeddings(self.global_emb[index], self.parts[index], self.visibility[index])

    @staticmethod
    def concat(items: list["ReIDEmbeddings"]) -> "ReIDEmbeddings":
        return ReIDEmbeddings(
            np.concatenate([e.global_emb for e in items]),
            np.concatenate([e.parts for e in items]),
            np.concatenate([e.visibility for e in items]),
        )


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm along the last axis (all-zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def aggregate(embeddings: ReIDEmbeddings) -> ReIDEmbeddings:
    """One embedding standing for N views of a person (a tracklet): what a tracklet query searches with.

    Per part, the visibility-weighted mean of the N part embeddings (plain mean where no view shows
    the part), re-normalised; the global vector is the re-normalised mean; visibility is the max.
    """
    if len(embeddings) == 0:
        raise ValueError("cannot aggregate zero embeddings")
    visibility = embeddings.visibility.astype(np.float64)
    total = visibility.sum(axis=0)
    weights = np.where(total > 0, visibility / np.maximum(total, 1e-12), 1.0 / len(embeddings))
    parts = np.einsum("nk,nkd->kd", weights, embeddings.parts.astype(np.float64))
    global_emb = embeddings.global_emb.astype(np.float64).mean(axis=0)
    return ReIDEmbeddings(
        unit_rows(global_emb[None]),
        unit_rows(parts[None]),
        embeddings.visibility.max(axis=0, keepdims=True).astype(np.float32),
    )
