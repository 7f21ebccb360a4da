"""Search with relevance feedback: hits the investigator confirmed are fused into the query, the query moves away
from what the rejected ones share, their look-alikes are pushed down, and marked detections do not come back as new
results.

The math is kpr_model.feedback's; this module reads the marked detections from the store and runs the searches.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pyarrow as pa

from kpr_model.distance import NEGATIVE_WEIGHT, REJECTION_WEIGHT, ReIDEmbeddings, fuse, kpr_distance, rejection_penalty
from storage.schema import EMBEDDING_COLUMNS, NotFoundError, StoreError, embeddings_of
from storage.search import DEFAULT_CANDIDATES, PersonHit, PersonSearch, SearchFilters, SearchHit

# With rejections, the fused query's best REJECTION_POOL_FACTOR x k results are re-scored, so that the
# ones rejections push below the k-th have others to take their place.
REJECTION_POOL_FACTOR = 3


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
    """PersonSearch's searches with feedback: the query fused with the confirmed detections (visibility-weighted per
    part) and moved away from what the rejected ones share (kpr_model.feedback.fuse), candidates ranked by their
    distance plus the rejection penalty, marked detections left out.

    Marked detections are not shown again: the investigator has judged them, the confirmed ones are part of the
    query now and the rejected ones are wrong, so their places go to detections not yet seen; in a search for
    people a mark judges the whole person, so the marked detections' tracklets are left out too. The penalty
    compares each candidate's exact KPR distance (over the queried parts; of the whole-body vectors in a
    global-only search) to the fused query and to the rejected detections (kpr_model.feedback.rejection_penalty).
    """

    def __init__(self, search: PersonSearch, feedback: Feedback, rejection_weight: float = REJECTION_WEIGHT,
                 negative_weight: float = NEGATIVE_WEIGHT) -> None:
        """Read the marked detections' embeddings; NotFoundError names the first id the store does not hold."""
        self.search_without_feedback = search
        self.feedback = feedback
        self.rejection_weight = rejection_weight
        self.negative_weight = negative_weight
        rows = self._rows(feedback.marked)
        same = len(dict.fromkeys(feedback.same))
        marked = self._embeddings_of(rows)
        self.confirmed, self.rejected = marked.select(slice(0, same)), marked.select(slice(same, None))
        self.marked_tracklets = sorted({t for t in rows["track_id"].to_pylist() if t}) if rows.num_rows else []

    def search(self, query: ReIDEmbeddings, k: int = 10, filters: SearchFilters = SearchFilters(),
               parts: Sequence[int] | None = None, rerank: bool = False, candidates: int = DEFAULT_CANDIDATES,
               global_only: bool = False) -> list[SearchHit]:
        """Top-``k`` detections for one query embedding and the feedback, best first (see PersonSearch.search)."""
        search = self.search_without_feedback
        fused, filters = self._fused(query), self._excluding_marks(filters, tracklets=False)
        if not len(self.rejected):
            return search.search(fused, k, filters, parts, rerank, candidates, global_only)
        hits = search.search(fused, REJECTION_POOL_FACTOR * k, filters, parts, rerank, candidates, global_only)
        penalty = self._penalty(fused, hits, parts, global_only)
        penalised = (replace(h, distance=h.distance + p) for h, p in zip(hits, penalty))
        return sorted(penalised, key=lambda h: h.distance)[:k]

    def people(self, query: ReIDEmbeddings, k: int = 10, filters: SearchFilters = SearchFilters(),
               parts: Sequence[int] | None = None, rerank: bool = False, candidates: int = DEFAULT_CANDIDATES,
               global_only: bool = False) -> list[PersonHit]:
        """Top-``k`` people for one query embedding and the feedback, best first (see PersonSearch.people); a person
        is penalised as its closest detection is."""
        search = self.search_without_feedback
        fused, filters = self._fused(query), self._excluding_marks(filters, tracklets=True)
        if not len(self.rejected):
            return search.people(fused, k, filters, parts, rerank, candidates, global_only)
        people = search.people(fused, REJECTION_POOL_FACTOR * k, filters, parts, rerank, candidates, global_only)
        penalty = self._penalty(fused, [p.best for p in people], parts, global_only)
        penalised = (replace(p, best=replace(p.best, distance=p.best.distance + x)) for p, x in zip(people, penalty))
        return sorted(penalised, key=lambda p: p.distance)[:k]

    def _fused(self, query: ReIDEmbeddings) -> ReIDEmbeddings:
        """The query fused with the confirmed detections and moved away from the rejected ones."""
        return fuse(query, self.confirmed, self.rejected, self.negative_weight)

    def _excluding_marks(self, filters: SearchFilters, tracklets: bool) -> SearchFilters:
        """``filters`` that also leave out the marked detections (and their tracklets when ``tracklets``)."""
        return replace(filters, exclude_detection_ids=[*filters.exclude_detection_ids, *self.feedback.marked],
                       exclude_track_ids=[*filters.exclude_track_ids, *(self.marked_tracklets if tracklets else ())])

    def _penalty(self, fused: ReIDEmbeddings, hits: Sequence[SearchHit], parts: Sequence[int] | None,
                 global_only: bool) -> list[float]:
        """The rejection penalty of each hit."""
        if not hits:
            return []
        gallery, rejected = self._embeddings_of(self._rows([h.detection_id for h in hits])), self.rejected
        if global_only or self.search_without_feedback.global_model:
            distance, fused, rejected, gallery = kpr_distance, *(_whole_body(e) for e in (fused, rejected, gallery))
        else:
            distance = partial(kpr_distance, parts=parts)
        to_query, to_rejected = distance(fused, gallery)[0], distance(rejected, gallery)
        return rejection_penalty(to_query, to_rejected, self.rejection_weight).tolist()

    def _rows(self, ids: Sequence[str]) -> pa.Table:
        """The embeddings and tracklets of detections ``ids``, in that order; NotFoundError names the first id the
        store lacks."""
        rows = self.search_without_feedback.store.detections_by_ids(ids, [*EMBEDDING_COLUMNS, "track_id"])
        held = set(rows["detection_id"].to_pylist()) if rows.num_rows else set()
        unknown = [i for i in ids if i not in held]
        if unknown:
            raise NotFoundError(f"unknown detection id {unknown[0]!r} among the marked hits")
        return rows

    def _embeddings_of(self, rows: pa.Table) -> ReIDEmbeddings:
        """The rows' embeddings (no row: zero rows of the store's shape)."""
        if rows.num_rows:
            return embeddings_of(rows)
        dim, parts = self.search_without_feedback.store.embedding_shape or (0, 0)
        return ReIDEmbeddings(np.zeros((0, dim), np.float32), np.zeros((0, parts, dim), np.float32),
                              np.zeros((0, parts), np.float32))


def _whole_body(embeddings: ReIDEmbeddings) -> ReIDEmbeddings:
    """The embeddings without their parts, so that the KPR distance compares the whole-body vectors alone."""
    return ReIDEmbeddings(embeddings.global_emb, embeddings.parts[:, :0], embeddings.visibility[:, :0])
