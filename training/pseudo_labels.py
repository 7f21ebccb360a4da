"""Pseudo-identities for an unlabeled archive: one per tracklet, merged across cameras only when safe.

A tracklet is one person by construction of the tracker, so it is one pseudo-identity within its camera.
Across cameras two tracklets are merged when their embeddings are mutually nearest between the two
cameras and their cosine similarity reaches a threshold; a merge that would put two tracklets of one
camera that overlap in time into one identity is refused (one person is never in two places at once).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np


@dataclass(frozen=True)
class TrackletSpan:
    """Where and when a tracklet lies: its id, camera and first/last time (seconds)."""

    track_id: str
    camera_id: str
    t_start: float
    t_end: float

    def overlaps(self, other: "TrackletSpan") -> bool:
        """Whether both lie in one camera and share a moment."""
        return self.camera_id == other.camera_id and self.t_start <= other.t_end and other.t_start <= self.t_end


def _mutual_nearest(similarity: np.ndarray, rows: np.ndarray, cols: np.ndarray, threshold: float) -> list[tuple[float, int, int]]:
    """(similarity, row, col) of each pair of ``rows`` x ``cols`` that are each other's nearest and reach ``threshold``."""
    block = similarity[np.ix_(rows, cols)]
    best_col, best_row = block.argmax(axis=1), block.argmax(axis=0)
    return [(float(block[i, j]), int(rows[i]), int(cols[j])) for i, j in enumerate(best_col)
            if best_row[j] == i and block[i, j] >= threshold]


def pseudo_identities(spans: list[TrackletSpan], embeddings: np.ndarray | None = None,
                      min_similarity: float = 0.7) -> list[int]:
    """A 0-based pseudo-identity per tracklet of ``spans``.

    Without ``embeddings`` every tracklet is its own identity. With L2-normalised ``embeddings`` [T, D]
    (one per tracklet: the current model's or a teacher's) cross-camera mutual nearest pairs of cosine
    similarity >= ``min_similarity`` are merged, most similar first, unless the merge would join two
    tracklets of one camera that overlap in time.
    """
    groups = [[i] for i in range(len(spans))]
    owner = list(range(len(spans)))
    if embeddings is not None and len(spans) > 1:
        similarity = embeddings @ embeddings.T
        cameras = np.array([s.camera_id for s in spans])
        pairs = []
        for first, second in combinations(sorted(set(cameras)), 2):
            pairs += _mutual_nearest(similarity, np.flatnonzero(cameras == first), np.flatnonzero(cameras == second),
                                     min_similarity)
        for _, a, b in sorted(pairs, reverse=True):
            ga, gb = owner[a], owner[b]
            if ga == gb or any(spans[i].overlaps(spans[j]) for i in groups[ga] for j in groups[gb]):
                continue
            for i in groups[gb]:
                owner[i] = ga
            groups[ga] += groups[gb]
            groups[gb] = []
    labels = {group: label for label, group in enumerate(sorted(set(owner)))}
    return [labels[group] for group in owner]
