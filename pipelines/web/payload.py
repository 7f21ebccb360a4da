"""JSON shapes of the web API: what a search's query was, its hits grouped by camera and tracklet, pickable detections."""
from __future__ import annotations

import math
from collections.abc import Sequence
from urllib.parse import quote

import numpy as np

from pipelines.query import Query, QueryResult
from storage.search import SearchHit, group_hits

LIST_COLUMNS = ("detection_id", "camera_id", "timestamp", "frame_index", "track_id")


def thumbnail_url(detection_id: str) -> str:
    """The app's URL of a stored detection's thumbnail (the id percent-encoded as one path segment)."""
    return "/api/thumbnails/" + quote(detection_id, safe="")


def finite(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _numbers(values: np.ndarray | None) -> list[float | None] | None:
    """A float array as a JSON list, non-finite entries as null."""
    return None if values is None else [finite(v) for v in np.asarray(values).reshape(-1)]


def hit_json(hit: SearchHit, rank: int, parts: Sequence[int] | None) -> dict:
    """One hit for the page: where and when, how close, how visible (mean over the queried parts), its thumbnail."""
    return {
        "rank": rank,
        "detection_id": hit.detection_id,
        "video_id": hit.video_id,
        "camera_id": hit.camera_id,
        "frame_index": hit.frame_index,
        "timestamp": hit.timestamp,
        "track_id": hit.track_id,
        "bbox": [float(v) for v in hit.bbox],
        "distance": finite(hit.distance),
        "visibility": _numbers(hit.visibility),
        "query_visibility": finite(hit.mean_visibility(parts)),
        "part_distances": _numbers(hit.part_distances),
        "thumbnail": thumbnail_url(hit.detection_id),
    }


def query_json(query: Query, result: QueryResult) -> dict:
    """What the page says of a query: its kind and stored id, and for an embedded crop its size and prompt points."""
    shown: dict = {"kind": result.kind}
    if result.kind == "tracklet":
        shown["track_id"] = query.track_id
    elif result.kind == "detection":
        shown["detection_id"] = query.detection_id
    if result.crop is not None:
        prompt = query.prompt
        shown.update(width=result.crop.shape[1], height=result.crop.shape[0],
                     positive=0 if prompt is None else prompt.target_points,
                     negative=0 if prompt is None else prompt.occluder_points)
    return shown


def groups_json(hits: Sequence[SearchHit], parts: Sequence[int] | None) -> list[dict]:
    """Hits grouped by camera, then tracklet (storage.search.group_hits order), each hit keeping its overall rank."""
    ranks = {hit.detection_id: i + 1 for i, hit in enumerate(hits)}
    return [
        {
            "camera_id": group.camera_id,
            "best_distance": finite(group.best_distance),
            "tracklets": [
                {
                    "track_id": tracklet.track_id,
                    "best_distance": finite(tracklet.best_distance),
                    "hits": [hit_json(h, ranks[h.detection_id], parts) for h in tracklet.hits],
                }
                for tracklet in group.tracklets
            ],
        }
        for group in group_hits(hits)
    ]


def detection_json(row: dict) -> dict:
    """A pickable query detection from a listing row (see LIST_COLUMNS)."""
    return {**{column: row.get(column) for column in LIST_COLUMNS}, "thumbnail": thumbnail_url(row["detection_id"])}
