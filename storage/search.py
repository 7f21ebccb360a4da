"""Person search: ANN on the global vector with where-prefilters, exact KPR part-distance re-rank,
optional k-reciprocal re-ranking, then the best detections or the best people (tracklets), and grouping
of the hits by camera and tracklet.

Global-only search ranks by the cosine distance of the global vectors alone: always for a store of a
global ReID model (it has no parts), on request for a KPR store (to compare with the part distance).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial

import numpy as np
import pyarrow as pa

from kpr_model.distance import (
    ReIDEmbeddings,
    aggregate,
    check_parts,
    k_reciprocal_rerank,
    kpr_distance,
    per_part_distances,
)
from storage import sql
from storage.schema import (
    GLOBAL_KIND,
    NotFoundError,
    RowsMovedError,
    StoreError,
    embeddings_of,
    global_vectors,
    holistic_weight,
)
from storage.store import Store

__all__ = [
    "CameraGroup",
    "PersonHit",
    "PersonSearch",
    "SearchFilters",
    "SearchHit",
    "TrackletGroup",
    "cosine_distance",
    "embeddings_of",
    "group_hits",
]

_META_COLUMNS = ("detection_id", "video_id", "camera_id", "frame_index", "timestamp", "track_id", "bbox", "thumbnail")

# A part query ("find these boots") still takes its ANN candidates by the global vector, which
# only approximates the chosen parts: it draws this many times more candidates before the exact
# part distance re-ranks them.
PART_POOL_FACTOR = 5


# ANN candidates re-ranked by the exact part distance: at 1M detections, without refinement, 700 reach
# recall@50 0.988 against an exact scan (500: 0.979, 1000: 0.992); see bench/results/search.json.
DEFAULT_CANDIDATES = 700
# Candidates when the filter keeps few enough rows to be scanned exactly (AnnSettings.flat_max_rows): among
# a filter's few rows the KPR top-50 is mostly other people, whose global-vector order differs more from
# KPR's, so 500 candidates of a 15k-row filter reached only 0.82 of it (see bench/README.md).
FILTERED_CANDIDATES = 4000
# ... and at least this share of the rows the filter keeps (the videos table's bound on them), for the larger filters
# that are still scanned: the global vector orders more strangers still less like KPR (a 36k-row filter: recall@50
# 0.977 at 4,000 candidates, 0.982 at 5,000). A fifth leaves the 15k-row filters of the benchmark at 4,000.
FILTERED_SHARE = 0.2
# No search re-ranks more candidates than this, whatever it asks for (a bound on one request's work).
MAX_CANDIDATES = 5000
# k-reciprocal re-ranking compares every pair of its gallery: it re-orders the best this many.
RERANK_POOL = 500
# A search for the top-k people re-ranks at least this many detections per person asked for: one tracklet
# brings tens of close detections (five of the top six detections were one tracklet's), so k detections
# would reach far fewer than k people.
PEOPLE_POOL_FACTOR = 20
# The columns that say which tracklet each re-ranked candidate belongs to, and when it was seen.
_PERSON_COLUMNS = ("track_id", "timestamp")
# A search whose rows maintenance moved before it read them all runs again: at most this many runs in all.
SEARCH_ATTEMPTS = 3

@dataclass
class SearchHit:
    """One search result: where the person was seen, and how close it is to the query.

    distance is what the hits are ranked by: the KPR part distance (over the queried parts only
    for a part query), the cosine distance of the global vectors in a global-only search, or the
    k-reciprocal re-ranked distance when re-ranking was asked for; ann_distance is the euclidean
    distance of the global vectors that selected the candidate (PQ-approximate once an ANN index
    exists); part_distances [K] is the euclidean distance per part, NaN where the part is not
    visible in both (for display; None in a global-only search); visibility [K] is None for a
    global model's hits, which have no parts.
    """

    detection_id: str
    video_id: str
    camera_id: str
    frame_index: int
    timestamp: float
    track_id: str | None
    bbox: tuple[float, float, float, float]
    distance: float
    ann_distance: float
    thumbnail: bytes | None
    visibility: np.ndarray | None
    part_distances: np.ndarray | None = None

    def mean_visibility(self, parts: Sequence[int] | None = None) -> float:
        """Mean visibility over the 0-based ``parts`` (all K when None): what min_visibility bounds (NaN: no parts)."""
        if self.visibility is None:
            return math.nan
        values = self.visibility if parts is None else self.visibility[list(parts)]
        return float(np.mean(values))


@dataclass
class PersonHit:
    """One person in the results: a tracklet (or a detection of no tracklet), shown by its closest detection.

    ``best`` is the tracklet's detection closest to the query (what the people are ranked by);
    ``t_start``/``t_end`` its time span (the stored tracklet's, else that of its matched detections);
    ``matched`` how many of its detections were among the re-ranked candidates, of its ``detections``.
    """

    best: SearchHit
    t_start: float
    t_end: float
    matched: int
    detections: int

    @property
    def distance(self) -> float:
        """The distance of its closest detection: what the people are ranked by."""
        return self.best.distance

    @property
    def track_id(self) -> str | None:
        """Its tracklet id (None: a detection of no tracklet)."""
        return self.best.track_id

    @property
    def camera_id(self) -> str:
        """The camera it was seen by (a tracklet lies within one video)."""
        return self.best.camera_id


@dataclass(frozen=True)
class SearchFilters:
    """Which detections a search may return: cameras, time window, minimum visibility, exclusions.

    ``cameras`` keeps only those cameras (None: all); ``t_min``/``t_max`` bound the frame timestamp
    (inclusive, epoch seconds); ``min_visibility`` keeps hits whose mean visibility over the
    queried parts (all K when no part is chosen) is at least that; excluded cameras, videos,
    detections and tracklets never appear; ``track_ids`` keeps only those tracklets' detections (None: all).
    """

    cameras: Sequence[str] | None = None
    exclude_cameras: Sequence[str] = ()
    exclude_video_ids: Sequence[str] = ()
    exclude_detection_ids: Sequence[str] = ()
    t_min: float | None = None
    t_max: float | None = None
    min_visibility: float = 0.0
    exclude_track_ids: Sequence[str] = ()
    track_ids: Sequence[str] | None = None

    def __post_init__(self) -> None:
        """Refuse filters that cannot mean anything: NaN or reversed times, visibility outside [0, 1]."""
        for name in ("t_min", "t_max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise StoreError(f"{name} must be a finite time in epoch seconds, got {value}")
        if self.t_min is not None and self.t_max is not None and self.t_min > self.t_max:
            start, end = (datetime.fromtimestamp(t, timezone.utc).isoformat() for t in (self.t_min, self.t_max))
            raise StoreError(f"empty time window: start {start} is after end {end}")
        if not 0.0 <= self.min_visibility <= 1.0:
            raise StoreError(f"minimum visibility must be between 0 and 1, got {self.min_visibility}")

    def where(self, visibility_parts: Sequence[int] | None = None) -> str | None:
        """The escaped `where` clause (None when nothing is filtered).

        ``visibility_parts`` are the 0-based parts whose mean visibility ``min_visibility`` bounds
        (PersonSearch passes the queried parts); without them that bound is left out.
        """
        return sql.all_of([
            None if self.cameras is None else sql.is_in("camera_id", self.cameras),
            sql.is_in("camera_id", self.exclude_cameras, negate=True) if self.exclude_cameras else None,
            sql.is_in("video_id", self.exclude_video_ids, negate=True) if self.exclude_video_ids else None,
            sql.is_in("detection_id", self.exclude_detection_ids, negate=True) if self.exclude_detection_ids else None,
            (f"track_id IS NULL OR {sql.is_in('track_id', self.exclude_track_ids, negate=True)}"
             if self.exclude_track_ids else None),
            None if self.track_ids is None else sql.is_in("track_id", self.track_ids),
            None if self.t_min is None else f"timestamp >= {sql.number(self.t_min)}",
            None if self.t_max is None else f"timestamp <= {sql.number(self.t_max)}",
            self._visibility_clause(visibility_parts),
        ])

    def _visibility_clause(self, parts: Sequence[int] | None) -> str | None:
        """``mean(visibility[parts]) >= min_visibility`` in LanceDB SQL (1-based list indexing)."""
        if not parts or self.min_visibility <= 0.0:
            return None
        total = " + ".join(f"visibility[{int(p) + 1}]" for p in parts)
        return f"({total}) / {len(parts)} >= {sql.number(self.min_visibility)}"


@dataclass
class TrackletGroup:
    """The hits of one tracklet (track_id None: a detection that belongs to no tracklet), best first."""

    track_id: str | None
    best_distance: float
    hits: list[SearchHit]


@dataclass
class CameraGroup:
    """The hits of one camera, as tracklet groups ordered by their best distance."""

    camera_id: str
    best_distance: float
    tracklets: list[TrackletGroup] = field(default_factory=list)


def group_hits(hits: Sequence[SearchHit]) -> list[CameraGroup]:
    """Hits grouped by camera, then by tracklet; cameras and tracklets ordered by their best distance."""
    tracks: dict[str, dict[object, list[SearchHit]]] = {}
    for i, hit in enumerate(sorted(hits, key=lambda h: h.distance)):
        key = hit.track_id if hit.track_id else ("untracked", i)
        tracks.setdefault(hit.camera_id, {}).setdefault(key, []).append(hit)
    cameras = []
    for camera_id, by_track in tracks.items():
        groups = [TrackletGroup(key if isinstance(key, str) else None, members[0].distance, members)
                  for key, members in by_track.items()]
        groups.sort(key=lambda g: g.best_distance)
        cameras.append(CameraGroup(camera_id, groups[0].best_distance, groups))
    cameras.sort(key=lambda c: c.best_distance)
    return cameras


class PersonSearch:
    """Answers "where else does this person appear?" over a Store's detections."""

    def __init__(self, store: Store, filtered_candidates: int = FILTERED_CANDIDATES,
                 max_candidates: int = MAX_CANDIDATES, filtered_share: float = FILTERED_SHARE) -> None:
        """Search ``store``; ``filtered_candidates``, or ``filtered_share`` of the rows a filter keeps if more, are
        re-ranked when a filter is scanned exactly, and no search re-ranks more than ``max_candidates``."""
        if min(filtered_candidates, max_candidates) < 1 or not 0.0 <= filtered_share <= 1.0:
            raise StoreError(f"candidate counts must be >= 1 and the filtered share within [0, 1], got "
                             f"{filtered_candidates}, {max_candidates} and {filtered_share}")
        self.store = store
        self.filtered_candidates = filtered_candidates
        self.max_candidates = max_candidates
        self.filtered_share = filtered_share

    def search(self, query: ReIDEmbeddings, k: int = 10, filters: SearchFilters = SearchFilters(),
               parts: Sequence[int] | None = None, rerank: bool = False, candidates: int = DEFAULT_CANDIDATES,
               global_only: bool = False) -> list[SearchHit]:
        """Top-``k`` detections for one query embedding, best first.

        ANN top-``candidates`` under ``filters`` (x PART_POOL_FACTOR for a part query; at least
        ``filtered_candidates`` and ``filtered_share`` of the kept rows when the filter is scanned exactly; never
        more than ``max_candidates``), exact KPR
        re-rank (only the 0-based ``parts`` when given) or, ``global_only`` (always for a global
        model's store), cosine distance of the global vectors, then optional k-reciprocal re-ranking.
        """
        def ranked() -> list[SearchHit]:
            ranking = self._ranking(query, k, filters, parts, rerank, candidates, global_only, ())
            return [] if ranking is None else self._hits_at(ranking, ranking.order[:k])

        return _again_if_moved(ranked)

    def people(self, query: ReIDEmbeddings, k: int = 10, filters: SearchFilters = SearchFilters(),
               parts: Sequence[int] | None = None, rerank: bool = False, candidates: int = DEFAULT_CANDIDATES,
               global_only: bool = False) -> list[PersonHit]:
        """Top-``k`` people (tracklets; a detection of no tracklet counts as one) for one query, best first.

        Ranked as `search` ranks detections, over at least PEOPLE_POOL_FACTOR x ``k`` candidates (never more
        than ``max_candidates``); each tracklet is ranked by its closest candidate and appears once.
        """
        pool = max(candidates, PEOPLE_POOL_FACTOR * k)
        return _again_if_moved(lambda: self._people(query, k, filters, parts, rerank, pool, global_only))

    def _people(self, query: ReIDEmbeddings, k: int, filters: SearchFilters, parts: Sequence[int] | None,
                rerank: bool, pool: int, global_only: bool) -> list[PersonHit]:
        """`people` over ``pool`` candidates, run once."""
        ranking = self._ranking(query, k, filters, parts, rerank, pool, global_only, _PERSON_COLUMNS)
        if ranking is None:
            return []
        members: dict[object, list[int]] = {}
        tracks = ranking.found["track_id"].to_pylist()
        for i in ranking.order:
            members.setdefault(tracks[i] or ("untracked", i), []).append(int(i))
        chosen = list(members.values())[:k]
        best = self._hits_at(ranking, np.array([m[0] for m in chosen], dtype=np.int64))
        times = ranking.found["timestamp"].to_numpy()
        stored = self._tracklet_spans([h.track_id for h in best if h.track_id])
        people = []
        for hit, matched in zip(best, chosen):
            if hit.track_id in stored:
                t_start, t_end, total = stored[hit.track_id]
            else:
                t_start, t_end, total = float(times[matched].min()), float(times[matched].max()), len(matched)
            people.append(PersonHit(hit, t_start, t_end, matched=len(matched), detections=total))
        return people

    @property
    def global_model(self) -> bool:
        """Whether the store's model is a global ReID model (no parts), so that every search is global-only."""
        return _is_global(self.store.model() or {})

    @property
    def holistic_weight(self) -> float:
        """How many times the holistic entry counts among the visible parts in the part distance (a hybrid model's
        setting, recorded with the store's model; 1 for a KPR model)."""
        return holistic_weight(self.store.model() or {})

    def detection_query(self, detection_id: str, other_cameras_only: bool = True,
                        filters: SearchFilters = SearchFilters(),
                        query: ReIDEmbeddings | None = None) -> tuple[ReIDEmbeddings, SearchFilters]:
        """A stored detection as a query: its embedding (or ``query`` standing in for it, e.g. its thumbnail
        re-embedded with a keypoint prompt) and ``filters`` that exclude it, and its camera by default."""
        row = self.store.get_detection(detection_id, ["camera_id", *(self.store.embedding_columns if query is None else ())])
        own_camera = [row["camera_id"]] if other_cameras_only else []
        filters = replace(filters, exclude_cameras=[*filters.exclude_cameras, *own_camera],
                          exclude_detection_ids=[*filters.exclude_detection_ids, detection_id])
        return embeddings_of([row]) if query is None else query, filters

    def tracklet_query(self, track_id: str, other_cameras_only: bool = True,
                       filters: SearchFilters = SearchFilters()) -> tuple[ReIDEmbeddings, SearchFilters]:
        """A stored tracklet as a query: its aggregated embedding and ``filters`` that exclude all its detections,
        and its camera by default (a tracklet lies within one video)."""
        query, cameras = self._tracklet_query(track_id)
        own_cameras = cameras if other_cameras_only else []
        filters = replace(filters, exclude_cameras=[*filters.exclude_cameras, *own_cameras],
                          exclude_track_ids=[*filters.exclude_track_ids, track_id])
        return query, filters

    def by_detection(self, detection_id: str, k: int = 10, other_cameras_only: bool = True,
                     filters: SearchFilters = SearchFilters(), parts: Sequence[int] | None = None,
                     rerank: bool = False, candidates: int = DEFAULT_CANDIDATES,
                     query: ReIDEmbeddings | None = None, global_only: bool = False) -> list[SearchHit]:
        """Top-``k`` detections for a stored detection (see `detection_query`)."""
        embedding, filters = self.detection_query(detection_id, other_cameras_only, filters, query)
        return self.search(embedding, k, filters, parts, rerank, candidates, global_only)

    def by_tracklet(self, track_id: str, k: int = 10, other_cameras_only: bool = True,
                    filters: SearchFilters = SearchFilters(), parts: Sequence[int] | None = None,
                    rerank: bool = False, candidates: int = DEFAULT_CANDIDATES,
                    global_only: bool = False) -> list[SearchHit]:
        """Top-``k`` detections for a stored tracklet (see `tracklet_query`)."""
        embedding, filters = self.tracklet_query(track_id, other_cameras_only, filters)
        return self.search(embedding, k, filters, parts, rerank, candidates, global_only)

    def _tracklet_query(self, track_id: str) -> tuple[ReIDEmbeddings, list[str]]:
        """A tracklet's aggregated embedding and camera(s): its `tracklets` row, else (a store written before
        tracklets were stored) the aggregate of its detections."""
        if not track_id:  # "": the untracked detections, not a tracklet
            raise StoreError("an empty tracklet id names no tracklet")
        if sql.storable(track_id):
            stored = self.store.list_tracklets(sql.equals("track_id", track_id), limit=1)
            if stored.num_rows:
                return embeddings_of(stored), stored["camera_id"].to_pylist()
            rows = self.store.tracklet_detections(track_id)
            if rows.num_rows:
                return aggregate(embeddings_of(rows)), sorted(set(rows["camera_id"].to_pylist()))
        raise NotFoundError(f"unknown tracklet id {track_id!r}")

    def _tracklet_spans(self, track_ids: Sequence[str]) -> dict[str, tuple[float, float, int]]:
        """(t_start, t_end, detections) of the stored tracklets among ``track_ids`` (none in a store written before
        tracklets were stored)."""
        ids = [t for t in dict.fromkeys(track_ids) if sql.storable(t)]
        if not ids:
            return {}
        rows = self.store.list_tracklets(sql.is_in("track_id", ids), columns=["track_id", "t_start", "t_end",
                                                                              "n_detections"])
        return {row["track_id"]: (row["t_start"], row["t_end"], row["n_detections"]) for row in rows.to_pylist()}

    def _ranking(self, query: ReIDEmbeddings, k: int, filters: SearchFilters, parts: Sequence[int] | None,
                 rerank: bool, candidates: int, global_only: bool, columns: Sequence[str]) -> _Ranking | None:
        """ANN candidates under the filters (with ``columns``), ranked by exact KPR or global cosine distance (then
        k-reciprocal); None when the store holds no detections or the filters keep none."""
        if len(query) != 1:
            raise ValueError(f"search takes one query embedding, got {len(query)}")
        if k < 1 or candidates < 1:
            raise StoreError(f"k and candidates must be >= 1, got k={k}, candidates={candidates}")
        shape = self.store.embedding_shape
        if shape is None:
            return None
        if shape != (query.dim, query.num_parts):
            raise StoreError(
                f"query has D={query.dim}, K={query.num_parts} but the store holds D={shape[0]}, K={shape[1]}"
            )
        model = self.store.model() or {}  # read once: a search asks two things of it
        global_model = _is_global(model)
        if (global_model or global_only) and parts is not None:
            raise StoreError("the store's model is a global ReID model, which has no body parts to choose" if global_model
                             else "a global-only search compares whole-body vectors: it takes no body parts")
        global_only = global_only or global_model
        chosen = _checked_parts(query, parts)
        pool = min(max(k, candidates * (PART_POOL_FACTOR if chosen is not None else 1)), self.max_candidates)
        where = filters.where(chosen if chosen is not None else range(query.num_parts))
        selective = filters.cameras is not None or filters.t_min is not None or filters.t_max is not None
        bound = self.store.detections_at_most(filters.cameras, filters.t_min, filters.t_max) if selective else None
        # An exact scan already ranks a global-only search exactly; a KPR re-rank needs the larger pool.
        share = 0 if bound is None else math.ceil(self.filtered_share * bound)
        flat_limit = pool if global_only else min(max(pool, self.filtered_candidates, share), self.max_candidates)
        found = self.store.nearest(query.global_emb[0], where, pool, [*self.store.embedding_columns, *columns],
                                   flat_limit=flat_limit, kept_at_most=bound)
        if not found.num_rows:
            return None
        gallery = embeddings_of(found)
        distance = cosine_distance if global_only else partial(kpr_distance, parts=chosen,
                                                               holistic_weight=holistic_weight(model))
        distances = distance(query, gallery)[0]
        order = np.argsort(distances, kind="stable")
        if rerank:
            order = order[:RERANK_POOL]
            pooled = gallery.select(order)
            scores = k_reciprocal_rerank(distances[order][None], distance(query, query), distance(pooled, pooled))[0]
            best = np.argsort(scores, kind="stable")
            order = order[best]
            distances = distances.copy()
            distances[order] = scores[best]
        return _Ranking(query, found, gallery, order, distances, global_only, global_model)

    def _hits_at(self, ranking: _Ranking, picked: np.ndarray) -> list[SearchHit]:
        """SearchHits for the ranking's candidates at positions ``picked`` (into its found rows), in that order."""
        ranked = ranking.gallery.select(picked)
        per_part = None if ranking.global_only else per_part_distances(ranking.query, ranked)
        rows = ranking.found.take(pa.array(picked, pa.int64()))
        read = self.store.detections_at(rows, [*_META_COLUMNS, "vector"])
        # Row ids are never reused within a table, but a table dropped and written again (a model replacement)
        # starts them afresh: the vectors read with the metadata prove these are the rows that were ranked.
        if not np.array_equal(global_vectors(read), ranked.global_emb, equal_nan=True):
            raise RowsMovedError("the detections searched were replaced while they were being searched; search again")
        return _hits(read, rows["_distance"], None if ranking.global_model else ranked.visibility,
                     ranking.distances[picked], per_part)


@dataclass
class _Ranking:
    """A search's re-ranked candidates: the store rows found, their embeddings, and ``order`` (positions into
    them, best first) by ``distances`` (k-reciprocal ones for the re-ranked pool when asked for)."""

    query: ReIDEmbeddings
    found: pa.Table
    gallery: ReIDEmbeddings
    order: np.ndarray
    distances: np.ndarray
    global_only: bool
    global_model: bool


def _again_if_moved(search: Callable[[], list]) -> list:
    """``search()``, run again (SEARCH_ATTEMPTS runs at most) while maintenance moves the rows it found before it
    reads them: it ranks row ids, which compaction renumbers."""
    for _ in range(SEARCH_ATTEMPTS - 1):
        try:
            return search()
        except RowsMovedError:
            continue
    return search()


def cosine_distance(query: ReIDEmbeddings, gallery: ReIDEmbeddings) -> np.ndarray:
    """1 - cosine similarity of the (unit) global vectors, [Q, G]: the distance of a global-only search."""
    return (1.0 - query.global_emb.astype(np.float64) @ gallery.global_emb.astype(np.float64).T).astype(np.float32)


def _checked_parts(query: ReIDEmbeddings, parts: Sequence[int] | None) -> list[int] | None:
    """The query's chosen parts as sorted indices; StoreError for a bad index or parts the query does not show."""
    if parts is None:
        return None
    try:
        chosen = check_parts(parts, query.num_parts)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if not (query.visibility[0, chosen] > 0).any():
        raise StoreError("the query does not show the chosen part(s) (visibility 0), so there is nothing to compare")
    return chosen


def _hits(rows: pa.Table, squared_l2: pa.ChunkedArray, visibility: np.ndarray | None, distances: np.ndarray,
          per_part: np.ndarray | None) -> list[SearchHit]:
    """SearchHits for the ranked store rows, their ANN distances, visibility and per-part distances (None: not shown)."""
    ann = np.sqrt(np.maximum(squared_l2.to_numpy(), 0.0))
    return [
        SearchHit(
            detection_id=row["detection_id"],
            video_id=row["video_id"],
            camera_id=row["camera_id"],
            frame_index=row["frame_index"],
            timestamp=row["timestamp"],
            track_id=row["track_id"] or None,
            bbox=tuple(row["bbox"]),
            distance=float(distances[i]),
            ann_distance=float(ann[i]),
            thumbnail=row["thumbnail"],
            visibility=None if visibility is None else visibility[i],
            part_distances=None if per_part is None else per_part[i],
        )
        for i, row in enumerate(rows.to_pylist())
    ]


def _is_global(model: dict) -> bool:
    """Whether a store's model record (``Store.model``) is of a global ReID model, which has no parts."""
    return model.get("kind") == GLOBAL_KIND
