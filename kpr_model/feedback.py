"""Relevance feedback math: a query fused with the hits an investigator confirmed and moved away from the rejected
ones, and rejected look-alikes kept down.

Pure numpy on ReIDEmbeddings and distances, so that search (storage/) and its benchmark use one definition.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpr_model.embeddings import ReIDEmbeddings, aggregate, unit_rows

# How far the query moves away from the mean of the rejected hits (Rocchio's gamma). On the demo store's real model
# output the people rejected look like the query, so what they share is partly the person's own look: mAP after one
# round 0.965 / 0.962 / 0.950 / 0.904 with 0 / 0.3 / 0.6 / 0.9 (two rounds 0.969 / 0.970 / 0.971 / 0.967), while
# bench/feedback.py's synthetic crowd dressed alike wants a strong move; 0.3 keeps most of both.
NEGATIVE_WEIGHT = 0.3
# How hard a candidate nearer a rejected hit than the query is pushed down: no change to bench/feedback.py's mAP
# (the rows it pushes there already rank below the person's), but a rejected look-alike that shares the query's
# only visible parts needs it (tests/test_feedback.py).
REJECTION_WEIGHT = 1.0
# How far a candidate's distance moves from the fused query's towards that of the nearest single view (the query
# or a confirmed hit): 1 ranks by the nearer of the fused query and that view (see exemplar_distance). On an
# 80-person rendered store (bench/README.md) mAP after two rounds 0.856 / 0.862 / 0.866 / 0.864 / 0.854 with
# 0 / 0.25 / 0.5 / 0.75 / 1: a single confirmed view also resembles other people.
EXEMPLAR_WEIGHT = 0.5


@dataclass(frozen=True)
class FeedbackWeights:
    """How strongly each kind of mark acts: ``negative`` moves the query away from what the rejected share (fuse),
    ``rejection`` pushes down what is nearer a rejected hit (rejection_penalty), ``exemplar`` lets a candidate
    near one confirmed view rank as that view's match (exemplar_distance)."""

    negative: float = NEGATIVE_WEIGHT
    rejection: float = REJECTION_WEIGHT
    exemplar: float = EXEMPLAR_WEIGHT

    def __post_init__(self) -> None:
        """Refuse weights outside their ranges."""
        if self.negative < 0 or self.rejection < 0 or not 0 <= self.exemplar <= 1:
            raise ValueError(f"feedback weights must be >= 0 (exemplar at most 1), got {self}")


def fuse(query: ReIDEmbeddings, confirmed: ReIDEmbeddings, rejected: ReIDEmbeddings | None = None,
         negative_weight: float = NEGATIVE_WEIGHT) -> ReIDEmbeddings:
    """The query, the hits confirmed as the same person and those rejected as one query embedding.

    Per part, the visibility-weighted mean of every view that shows the part, so a confirmed back view
    supplies the parts a front view hid, while a part that no view shows stays invisible (visibility 0);
    the global vector is the mean of all views. Each view counts once, the query like any confirmed hit (search
    passes each marked tracklet's aggregated embedding as one view).
    Then, as Rocchio's relevance feedback does, each part moves away from what the rejected hits share: their
    visibility-weighted mean part (unnormalised: rejections with little in common barely move it) x
    ``negative_weight`` x (1 - 1/n), n the rejected views that show the part, is subtracted before re-normalising;
    the global vector likewise. One rejection says little about a shared look (its mean is that person, whom
    rejection_penalty pushes down), and moving away from a look-alike that shares the query's only visible parts
    leaves the query its noise, so the move grows with the rejections.
    """
    if len(query) != 1:
        raise ValueError(f"fuse takes one query embedding, got {len(query)}")
    fused = aggregate(ReIDEmbeddings.concat([query, confirmed])) if len(confirmed) else query
    if rejected is None or len(rejected) < 2 or negative_weight == 0:
        return fused
    weights = rejected.visibility.astype(np.float64)
    shown = weights.sum(axis=0)
    views = (weights > 0).sum(axis=0)
    step = negative_weight * (1.0 - 1.0 / np.maximum(views, 1))
    away = np.einsum("nk,nkd->kd", weights / np.maximum(shown, 1e-12), rejected.parts.astype(np.float64))
    parts = fused.parts[0] - step[:, None] * away
    global_step = negative_weight * (1.0 - 1.0 / len(rejected))
    global_emb = fused.global_emb[0] - global_step * rejected.global_emb.astype(np.float64).mean(axis=0)
    return ReIDEmbeddings(unit_rows(global_emb[None]), unit_rows(parts[None]), fused.visibility)


def rejection_penalty(to_query: np.ndarray, to_rejected: np.ndarray, weight: float = REJECTION_WEIGHT) -> np.ndarray:
    """What rejections add to each candidate's distance [G]: ``weight`` x how much nearer the candidate is to its
    nearest rejected hit than to the query, and 0 for candidates nearer the query.

    ``to_query`` [G] are the candidates' distances from the (fused) query, ``to_rejected`` [R, G] from each rejected
    hit, in one metric. A candidate nearer a rejected hit is more likely that person (or one of their look-alikes)
    than the one sought, the more so the larger the margin; candidates that resemble the query more than any
    rejected hit keep their distance, so a rejection never pushes down a true match that looks like the query.
    The margin is a difference of two distances, so the penalty needs no threshold tuned to a model's scale.
    """
    to_query = np.asarray(to_query, np.float64)
    to_rejected = np.asarray(to_rejected, np.float64)
    if to_rejected.ndim != 2 or to_rejected.shape[1] != to_query.shape[0]:
        raise ValueError(f"expected to_query [G] and to_rejected [R, G], got {to_query.shape} and {to_rejected.shape}")
    if weight < 0:
        raise ValueError(f"rejection weight must be >= 0, got {weight}")
    if not len(to_rejected):
        return np.zeros_like(to_query)
    return weight * np.maximum(to_query - to_rejected.min(axis=0), 0.0)


def exemplar_distance(to_fused: np.ndarray, to_views: np.ndarray, weight: float = EXEMPLAR_WEIGHT) -> np.ndarray:
    """Each candidate's distance from the person sought [G]: its distance from the fused query, moved by ``weight``
    towards its distance from the nearest single view when that is smaller.

    ``to_fused`` [G] are the distances from the fused query, ``to_views`` [V, G] from each view the investigator
    has accepted (the query and the confirmed hits), in one metric. The fused query is a mean: of a front and a
    back view it keeps both halves, and a candidate that shows only what one view showed (a back seen from
    behind, legs behind a car) is near that view but farther from the mean, so the nearest view speaks for it.
    """
    to_fused = np.asarray(to_fused, np.float64)
    to_views = np.asarray(to_views, np.float64)
    if to_views.ndim != 2 or to_views.shape[1] != to_fused.shape[0]:
        raise ValueError(f"expected to_fused [G] and to_views [V, G], got {to_fused.shape} and {to_views.shape}")
    if not len(to_views):
        return to_fused
    return to_fused - weight * np.maximum(to_fused - to_views.min(axis=0), 0.0)
