"""LanceDB storage of detections and videos, and person search over them (ANN + exact KPR re-rank)."""
from storage.schema import SCHEMA_VERSION, StoreError, detection_row, detections_table, embeddings_of
from storage.search import CameraGroup, PersonSearch, SearchFilters, SearchHit, TrackletGroup, group_hits
from storage.store import Store

__all__ = [
    "SCHEMA_VERSION",
    "CameraGroup",
    "PersonSearch",
    "SearchFilters",
    "SearchHit",
    "Store",
    "StoreError",
    "TrackletGroup",
    "detection_row",
    "detections_table",
    "embeddings_of",
    "group_hits",
]
