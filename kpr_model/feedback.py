"""Relevance feedback math: a query fused with the hits an investigator confirmed, and rejected look-alikes kept down.

Pure numpy on ReIDEmbeddings and distances, so that search (storage/) and its benchmark use one definition.
"""
from __future__ import annotations

import numpy as np

from kpr_model.embeddings import ReIDEmbeddings, aggregate

# How hard a candidate nearer a rejected hit than the query is pushed down (bench/feedback.py measures it).
REJECTION_WEIGHT = 1.0


def fuse(query: ReIDEmbeddings, confirmed: ReIDEmbeddings) -> ReIDEmbeddings:
    """The query and the hits confirmed as the same person as one query embedding.

    Per part, the visibility-weighted mean of every view that shows the part, so a confirmed back view
    supplies the parts a front view hid, while a part that no view shows stays invisible (visibility 0);
    the global vector is the mean of all views. Each view counts once, the query like any confirmed hit
    (aggregating each tracklet's confirmed hits into one view first did not do better: bench/feedback.py).
    """
    if len(query) != 1:
        raise ValueError(f"fuse takes one query embedding, got {len(query)}")
    return aggregate(ReIDEmbeddings.concat([query, confirmed])) if len(confirmed) else query


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
