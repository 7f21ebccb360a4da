"""Search with relevance feedback: the tracklets of hits the investigator confirmed are fused into the query and
searched with, the query moves away from what the rejected ones share, their look-alikes are pushed down, and marked
detections do not come back as new results.

The math is kpr_model.feedback's; this module reads the marked detections from the store and runs the searches.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

import numpy as np
import pyarrow as pa

from kpr_model.distance import (
    FeedbackWeights,
    ReIDEmbeddings,
    exemplar_distance,
    fuse,
    kpr_distance,
    rejection_penalty,
)
from storage import sql
from storage.schema import NotFoundError, StoreError, embeddings_of
from storage.search import DEFAULT_CANDIDATES, PersonHit, PersonSearch, SearchFilters, SearchHit

# With feedback, the fused query's best POOL_FACTOR x k results are re-scored, so that the ones the marks push
# below the k-th have others to take their place.
POOL_FACTOR = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Feedback:
    """The investigator's marks on earlier hits, by detection id: ``same`` person as the query, or ``rejected``."""

    same: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a detection marked both ways."""
        both = [i for i in self.same if i in set(self.rejected)]
        if both:
            raise StoreError(f"detection {both[0]!r} is marked both as the same person and as not this person")

    @property
    def marked(self) -> list[str]:
        """Every marked detection id once, the confirmed first."""
        return list(dict.fromkeys([*self.same, *self.rejected]))


class FeedbackSearch:
    """PersonSearch's searches with feedback: each marked detection stands for its tracklet (the tracklet's
    aggregated embedding, ``whole_tracklets``); the query is fused with the confirmed ones (visibility-weighted per
    part) and moved away from what the rejected ones share (kpr_model.feedback.fuse); candidates are gathered for
    the fused query and for each confirmed one (``gather``), ranked by their distance from the fused query moved
    towards that from the nearest of the query and the confirmed (kpr_model.feedback.exemplar_distance), plus the
    rejection penalty; marked detections are left out.

    A mark judges the person a tracklet follows, and the tracklet's views together show more of them than the one
    marked. A confirmed back view's matches lie near it but may lie far from the fused query, a mean of front and
    back, so they are gathered and ranked by that view too. Marked detections are not shown again: the investigator
    has judged them, the confirmed ones are part of the query now and the rejected ones are wrong, so their places
    go to detections not yet seen; in a search for people a mark judges the whole person, so the marked
    detections' tracklets are left out too. Distances are exact KPR distances over the queried parts (of the
    whole-body vectors in a global-only search).
    """

    def __init__(self, search: PersonSearch, feedback: Feedback, weights: FeedbackWeights = FeedbackWeights(),
                 gather: bool = True, whole_tracklets: bool = True) -> None:
        """Read the marked detections' embeddings (with ``whole_tracklets``, those of their tracklets);
        NotFoundError names the first id the store does not hold."""
        self.search_without_feedback = search
        self.feedback = feedback
        self.weights = weights
        self.gather = gather
        rows = self._rows(feedback.marked)
        same = len(dict.fromkeys(feedback.same))
        marked = self._tracklets_of(rows) if whole_tracklets else self._embeddings_of(rows)
        self.confirmed, self.rejected = marked.select(slice(0, same)), marked.select(slice(same, None))
        self.marked_tracklets = sorted({t for t in rows["track_id"].to_pylist() if t}) if rows.num_rows else []

    def search(self, query: ReIDEmbeddings, k: int = 10, filters: SearchFilters = SearchFilters(),
               parts: Sequence[int] | None = None, rerank: bool = False, candidates: int = DEFAULT_CANDIDATES,
               global_only: bool = False) -> list[SearchHit]:
        """Top-``k`` detections for one query embedding and the feedback, best first (see PersonSearch.search)."""
        search = partial(self.search_without_feedback.search, filters=self._excluding_marks(filters, tracklets=False),
                         parts=parts, rerank=rerank, candidates=candidates, global_only=global_only)
        fused = self._fused(query)
        if not self.feedback.marked:
            return search(fused, k)
        hits = _first_of_each(self._gathered(search, fused, k), lambda h: h.detection_id)
        scores = self._scores(query, fused, hits, parts, global_only)
        return sorted((replace(h, distance=d) for h, d in zip(hits, scores)), key=lambda h: h.distance)[:k]

    def people(self, query: ReIDEmbeddings, k: int = 10, filters: SearchFilters = SearchFilters(),
               parts: Sequence[int] | None = None, rerank: bool = False, candidates: int = DEFAULT_CANDIDATES,
               global_only: bool = False) -> list[PersonHit]:
        """Top-``k`` people for one query embedding and the feedback, best first (see PersonSearch.people); a person
        is scored as its closest detection is."""
        search = partial(self.search_without_feedback.people, filters=self._excluding_marks(filters, tracklets=True),
                         parts=parts, rerank=rerank, candidates=candidates, global_only=global_only)
        fused = self._fused(query)
        if not self.feedback.marked:
            return search(fused, k)
        people = self._gathered(search, fused, k)
        scores = self._scores(query, fused, [p.best for p in people], parts, global_only)
        ranked = sorted((replace(p, best=replace(p.best, distance=d)) for p, d in zip(people, scores)),
                        key=lambda p: p.distance)
        return _first_of_each(ranked, lambda p: p.track_id or p.best.detection_id)[:k]

    def _fused(self, query: ReIDEmbeddings) -> ReIDEmbeddings:
        """The query fused with the confirmed detections and moved away from the rejected ones."""
        return fuse(query, self.confirmed, self.rejected, self.weights.negative)

    def _gathered(self, search: Callable[[ReIDEmbeddings, int], list[T]], fused: ReIDEmbeddings, k: int) -> list[T]:
        """The fused query's best POOL_FACTOR x ``k`` results and, with ``gather``, each confirmed detection's best
        ``k``."""
        found = search(fused, POOL_FACTOR * k)
        for i in range(len(self.confirmed) if self.gather else 0):
            found += search(self.confirmed.select(slice(i, i + 1)), k)
        return found

    def _excluding_marks(self, filters: SearchFilters, tracklets: bool) -> SearchFilters:
        """``filters`` that also leave out the marked detections (and their tracklets when ``tracklets``)."""
        return replace(filters, exclude_detection_ids=[*filters.exclude_detection_ids, *self.feedback.marked],
                       exclude_track_ids=[*filters.exclude_track_ids, *(self.marked_tracklets if tracklets else ())])

    def _scores(self, query: ReIDEmbeddings, fused: ReIDEmbeddings, hits: Sequence[SearchHit],
                parts: Sequence[int] | None, global_only: bool) -> list[float]:
        """Each hit's distance from the nearest of the fused query, the query and the confirmed detections, plus
        its rejection penalty."""
        if not hits:
            return []
        gallery = self._embeddings_of(self._rows([h.detection_id for h in hits]))
        views, rejected = ReIDEmbeddings.concat([query, self.confirmed]), self.rejected
        if global_only or self.search_without_feedback.global_model:
            distance = kpr_distance
            fused, views, rejected, gallery = (_whole_body(e) for e in (fused, views, rejected, gallery))
        else:
            distance = partial(kpr_distance, parts=parts, holistic_weight=self.search_without_feedback.holistic_weight)
        nearest = exemplar_distance(distance(fused, gallery)[0], distance(views, gallery), self.weights.exemplar)
        if len(rejected):
            nearest = nearest + rejection_penalty(nearest, distance(rejected, gallery), self.weights.rejection)
        return nearest.tolist()

    def _rows(self, ids: Sequence[str]) -> pa.Table:
        """The embeddings and tracklets of detections ``ids``, in that order; NotFoundError names the first id the
        store lacks."""
        store = self.search_without_feedback.store
        rows = store.detections_by_ids(ids, [*store.embedding_columns, "track_id"])
        held = set(rows["detection_id"].to_pylist()) if rows.num_rows else set()
        unknown = [i for i in ids if i not in held]
        if unknown:
            raise NotFoundError(f"unknown detection id {unknown[0]!r} among the marked hits")
        return rows

    def _tracklets_of(self, rows: pa.Table) -> ReIDEmbeddings:
        """The aggregated embedding of each row's stored tracklet (the row's own where it has none): a mark on one
        detection judges the person the tracklet follows, and the tracklet's views together show more of them."""
        own = self._embeddings_of(rows)
        tracks = rows["track_id"].to_pylist() if rows.num_rows else []
        storable = [t for t in dict.fromkeys(tracks) if t and sql.storable(t)]
        if not storable:
            return own
        stored = self.search_without_feedback.store.list_tracklets(sql.is_in("track_id", storable))
        at = {t: len(own) + i for i, t in enumerate(stored["track_id"].to_pylist())} if stored.num_rows else {}
        both = ReIDEmbeddings.concat([own, embeddings_of(stored)]) if at else own
        return both.select(np.array([at.get(t, i) for i, t in enumerate(tracks)], np.int64))

    def _embeddings_of(self, rows: pa.Table) -> ReIDEmbeddings:
        """The rows' embeddings (no row: zero rows of the store's shape)."""
        if rows.num_rows:
            return embeddings_of(rows)
        dim, parts = self.search_without_feedback.store.embedding_shape or (0, 0)
        return ReIDEmbeddings(np.zeros((0, dim), np.float32), np.zeros((0, parts, dim), np.float32),
                              np.zeros((0, parts), np.float32))


def _first_of_each(items: Sequence[T], key: Callable[[T], Hashable]) -> list[T]:
    """``items`` in their order, keeping the first of those with the same ``key``."""
    first: dict[Hashable, T] = {}
    for item in items:
        first.setdefault(key(item), item)
    return list(first.values())


def _whole_body(embeddings: ReIDEmbeddings) -> ReIDEmbeddings:
    """The embeddings without their parts, so that the KPR distance compares the whole-body vectors alone."""
    return ReIDEmbeddings(embeddings.global_emb, embeddings.parts[:, :0], embeddings.visibility[:, :0])
