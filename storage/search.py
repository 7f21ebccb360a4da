"""Person search: ANN on the global vector with where-prefilters, then exact KPR part-distance re-rank."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kpr_model.distance import kpr_distance
from kpr_model.embeddings import ReIDEmbeddings
from storage import sql
from storage.schema import StoreError, embeddings_of
from storage.store import Store

__all__ = ["PersonSearch", "SearchHit", "embeddings_of", "search_filter"]

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


def search_filter(
    cameras: Sequence[str] | None = None,
    exclude_cameras: Sequence[str] | None = None,
    exclude_video_ids: Sequence[str] | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    exclude_detection_ids: Sequence[str] | None = None,
) -> str | None:
    """The escaped `where` clause for the search filters (None when nothing is filtered)."""
    return sql.all_of([
        None if cameras is None else sql.is_in("camera_id", cameras),
        sql.is_in("camera_id", exclude_cameras, negate=True) if exclude_cameras else None,
        sql.is_in("video_id", exclude_video_ids, negate=True) if exclude_video_ids else None,
        sql.is_in("detection_id", exclude_detection_ids, negate=True) if exclude_detection_ids else None,
        None if t_min is None else f"timestamp >= {sql.number(t_min)}",
        None if t_max is None else f"timestamp <= {sql.number(t_max)}",
    ])


class PersonSearch:
    """Answers "where else does this person appear?" over a Store's detections."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def search(
        self,
        query: ReIDEmbeddings,
        k: int = 10,
        cameras: Sequence[str] | None = None,
        exclude_cameras: Sequence[str] | None = None,
        exclude_video_ids: Sequence[str] | None = None,
        t_min: float | None = None,
        t_max: float | None = None,
        candidates: int = 200,
    ) -> list[SearchHit]:
        """Top-``k`` detections for one query embedding: ANN top-``candidates`` then KPR part re-rank.

        ``cameras`` keeps only those cameras; ``t_min``/``t_max`` bound the frame timestamp
        (inclusive, epoch seconds); excluded cameras and videos never appear.
        """
        where = search_filter(cameras, exclude_cameras, exclude_video_ids, t_min, t_max)
        return self._ranked(query, k, candidates, where)

    def by_detection(
        self,
        detection_id: str,
        k: int = 10,
        other_cameras_only: bool = True,
        cameras: Sequence[str] | None = None,
        exclude_cameras: Sequence[str] | None = None,
        exclude_video_ids: Sequence[str] | None = None,
        t_min: float | None = None,
        t_max: float | None = None,
        candidates: int = 200,
    ) -> list[SearchHit]:
        """Search with a stored detection as the query (itself excluded; its camera too by default)."""
        row = self.store.get_detection(detection_id)
        if row is None:
            raise StoreError(f"unknown detection id {detection_id!r}")
        excluded = [*(exclude_cameras or []), *([row["camera_id"]] if other_cameras_only else [])]
        where = search_filter(cameras, excluded, exclude_video_ids, t_min, t_max, exclude_detection_ids=[detection_id])
        return self._ranked(embeddings_of([row]), k, candidates, where)

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
