"""Scoring of cross-camera retrieval: who a tracklet is, rank-1 and average precision, invisible parts.

Pure functions on small arrays, so the bench's figures can be checked on hand-made inputs.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

# A label that matches no query: a distractor (e.g. a person of another video).
DISTRACTOR = -1
# Share of a tracklet's detections that must lie in one person's time span for it to be labelled as that person.
MIN_LABEL_SHARE = 0.8
# all_invisible_rate counts detections with at least CONFIDENT_KEYPOINTS keypoints of confidence >= KEYPOINT_CONFIDENCE,
# and calls such a detection all-invisible when every part's visibility is below PART_VISIBLE.
CONFIDENT_KEYPOINTS = 5
KEYPOINT_CONFIDENCE = 0.3
PART_VISIBLE = 0.5


def person_at(frame: int, spans: Mapping[int, tuple[int, int]]) -> int | None:
    """The person whose (inclusive) frame span holds ``frame``, else None."""
    return next((person for person, (lo, hi) in spans.items() if lo <= frame <= hi), None)


def label_tracklet(frames: Sequence[int], spans: Mapping[int, tuple[int, int]],
                   min_share: float = MIN_LABEL_SHARE) -> int | None:
    """The person of a tracklet whose detections lie at ``frames``: the person whose span holds at least
    ``min_share`` of them, else None (unlabelled: left out of the ranking as junk)."""
    if not frames:
        return None
    counts = Counter(person_at(frame, spans) for frame in frames)
    person, count = counts.most_common(1)[0]
    return person if person is not None and count >= min_share * len(frames) else None


def ranked_items(item_of_hit: Sequence[str | None]) -> list[str]:
    """The distinct items (e.g. tracklets) of ranked hits in the order of their first (best) hit; None is skipped."""
    return list(dict.fromkeys(item for item in item_of_hit if item is not None))


def retrieval_scores(query_label: int, ranked_labels: Sequence[int | None]) -> tuple[float, float] | None:
    """(top1, average precision) of one query over a ranked gallery's labels; None when no gallery item shares the
    query's label (the query cannot be scored). Unlabelled (None) items are left out of the ranking."""
    kept = np.array([label == query_label for label in ranked_labels if label is not None], dtype=float)
    if not kept.any():
        return None
    precision = np.cumsum(kept) / np.arange(1, len(kept) + 1)
    return float(kept[0]), float(precision[kept > 0].mean())


def summarise(scores: Sequence[tuple[float, float] | None]) -> dict:
    """``top1`` and ``map`` averaged over the scorable queries, and how many there were."""
    kept = [s for s in scores if s is not None]
    if not kept:
        return {"top1": None, "map": None, "queries": 0}
    return {"top1": round(float(np.mean([s[0] for s in kept])), 3),
            "map": round(float(np.mean([s[1] for s in kept])), 3), "queries": len(kept)}


def all_invisible_rate(keypoints: np.ndarray, visibility: np.ndarray) -> float | None:
    """Share of detections with >= CONFIDENT_KEYPOINTS confident keypoints whose parts are all below PART_VISIBLE.

    ``keypoints`` [N, 17, 3] (x, y, confidence), ``visibility`` [N, K]; None when no detection qualifies.
    """
    posed = (keypoints[:, :, 2] >= KEYPOINT_CONFIDENCE).sum(axis=1) >= CONFIDENT_KEYPOINTS
    if not posed.any():
        return None
    return round(float((visibility[posed] < PART_VISIBLE).all(axis=1).mean()), 4)
