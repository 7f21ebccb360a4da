"""Person search: ANN on the global vector with where-prefilters, then exact KPR part-distance re-rank."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from kpr_model.distance import ReIDEmbeddings, kpr_distance
from storage import sql
from storage.schema import StoreError, embeddings_of
from storage.store import Store

__all__ = ["PersonSearch", "SearchFilters", "SearchHit", "embeddings_of"]

_META_COLUMNS = ("detection_id", "video_id", "camera_id", "frame_index", "timestamp", "track_id", "bbox", "thumbnail")
_HIT_COLUMNS = (*_META_COLUMNS, "vector", "parts", "visibility")


@dataclass
class SearchHit:
    """One search result: where the person was seen, and how close it is to the query.

    distance is the KPR part distance used for ranking; ann_distance is the euclidean distance of
    the global vectors that selected the candidate (PQ-approximate once an ANN index exists).
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
    visibility: np.ndarray


@dataclass(frozen=True)
class SearchFilters:
    """Which detections a search may return: camera allow/deny lists, excluded videos/detections, time window.

    ``cameras`` keeps only those cameras (None: all); ``t_min``/``t_max`` bound the frame timestamp
    (inclusive, epoch seconds); excluded cameras, videos and detections never appear.
    """

    cameras: Sequence[str] | None = None
    exclude_cameras: Sequence[str] = ()
    exclude_video_ids: Sequence[str] = ()
    exclude_detection_ids: Sequence[str] = ()
    t_min: float | None = None
    t_max: float | None = None

    def where(self) -> str | None:
        """The escaped `where` clause (None when nothing is filtered)."""
        return sql.all_of([
            None if self.cameras is None else sql.is_in("camera_id", self.cameras),
            sql.is_in("camera_id", self.exclude_cameras, negate=True) if self.exclude_cameras else None,
            sql.is_in("video_id", self.exclude_video_ids, negate=True) if self.exclude_video_ids else None,
            sql.is_in("detection_id", self.exclude_detection_ids, negate=True) if self.exclude_detection_ids else None,
            None if self.t_min is None else f"timestamp >= {sql.number(self.t_min)}",
            None if self.t_max is None else f"timestamp <= {sql.number(self.t_max)}",
        ])


class PersonSearch:
    """Answers "where else does this person appear?" over a Store's detections."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def search(self, query: ReIDEmbeddings, k: int = 10, filters: SearchFilters = SearchFilters(),
               candidates: int = 200) -> list[SearchHit]:
        """Top-``k`` detections for one query embedding: ANN top-``candidates`` under ``filters``, then KPR part re-rank."""
        return self._ranked(query, k, candidates, filters.where())

    def by_detection(self, detection_id: str, k: int = 10, other_cameras_only: bool = True,
                     filters: SearchFilters = SearchFilters(), candidates: int = 200) -> list[SearchHit]:
        """Search with a stored detection as the query (itself excluded; its camera too by default)."""
        row = self.store.get_detection(detection_id)
        if row is None:
            raise StoreError(f"unknown detection id {detection_id!r}")
        own_camera = [row["camera_id"]] if other_cameras_only else []
        filters = replace(filters, exclude_cameras=[*filters.exclude_cameras, *own_camera],
                          exclude_detection_ids=[*filters.exclude_detection_ids, detection_id])
        return self._ranked(embeddings_of([row]), k, candidates, filters.where())

    def _ranked(self, query: ReIDEmbeddings, k: int, candidates: int, where: str | None) -> list[SearchHit]:
        """ANN candidates under ``where``, re-ranked by exact KPR distance, best ``k`` first."""
        if len(query) != 1:
            raise ValueError(f"search takes one query embedding, got {len(query)}")
        shape = self.store.embedding_shape
        if shape is None:
            return []
        if shape != (query.dim, query.num_parts):
            raise StoreError(
                f"query has D={query.dim}, K={query.num_parts} but the store holds D={shape[0]}, K={shape[1]}"
            )
        found = self.store.nearest(query.global_emb[0], where, max(k, candidates), _HIT_COLUMNS)
        if not found.num_rows:
            return []
        gallery = embeddings_of(found)
        distances = kpr_distance(query, gallery)[0]
        ann = np.sqrt(np.maximum(found["_distance"].to_numpy(zero_copy_only=False), 0.0))
        order = np.argsort(distances, kind="stable")[:k]
        rows = found.select(list(_META_COLUMNS)).take(pa.array(order)).to_pylist()
        return [
            SearchHit(
                detection_id=row["detection_id"],
                video_id=row["video_id"],
                camera_id=row["camera_id"],
                frame_index=row["frame_index"],
                timestamp=row["timestamp"],
                track_id=row["track_id"],
                bbox=tuple(row["bbox"]),
                distance=float(distances[i]),
                ann_distance=float(ann[i]),
                thumbnail=row["thumbnail"],
                visibility=gallery.visibility[i],
            )
            for i, row in zip(order, rows)
        ]
