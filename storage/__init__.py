"""LanceDB storage of detections, tracklets and videos, and person search over them (ANN + exact KPR re-rank)."""
from storage.schema import (
    SCHEMA_VERSION,
    TRACKLETS,
    NotFoundError,
    RowsMovedError,
    StoreError,
    detection_row,
    detections_table,
    embeddings_of,
    global_vectors,
    tracklet_row,
    tracklets_schema,
    tracklets_table,
)
from storage.search import (CameraGroup, PersonHit, PersonSearch, SearchFilters, SearchHit, TrackletGroup,
                            group_hits)
from storage.store import Store
from storage.writer import VideoRows

__all__ = [
    "SCHEMA_VERSION",
    "TRACKLETS",
    "CameraGroup",
    "NotFoundError",
    "RowsMovedError",
    "PersonHit",
    "PersonSearch",
    "SearchFilters",
    "SearchHit",
    "Store",
    "StoreError",
    "TrackletGroup",
    "VideoRows",
    "detection_row",
    "detections_table",
    "embeddings_of",
    "global_vectors",
    "group_hits",
    "tracklet_row",
    "tracklets_schema",
    "tracklets_table",
]
