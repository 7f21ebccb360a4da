"""JSON shapes of the web API: what a search's query was, its people or detections (each with its identity once the
store is linked), pickable tracklets."""
from __future__ import annotations

import math
from collections.abc import Sequence
from urllib.parse import quote

import numpy as np

from pipelines.query import Query, QueryResult
from pipelines.times import span_text, utc_text
from storage.catalog import TrackletSummary
from storage.search import PersonHit, SearchHit


def thumbnail_url(detection_id: str) -> str:
    """The app's URL of a stored detection's thumbnail (the id percent-encoded as one path segment)."""
    return "/api/thumbnails/" + quote(detection_id, safe="")


def tracklet_thumbnail_url(track_id: str) -> str:
    """The app's URL of a tracklet's best thumbnail (the id percent-encoded as one path segment)."""
    return f"/api/tracklets/{quote(track_id, safe='')}/thumbnail"


def identity_thumbnail_url(identity_id: str) -> str:
    """The app's URL of an identity's representative thumbnail (the id percent-encoded as one path segment)."""
    return f"/api/identities/{quote(identity_id, safe='')}/thumbnail"


def finite(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _numbers(values: np.ndarray | None) -> list[float | None] | None:
    """A float array as a JSON list, non-finite entries as null."""
    return None if values is None else [finite(v) for v in np.asarray(values).reshape(-1)]


def hit_json(hit: SearchHit, rank: int, parts: Sequence[int] | None, identities: dict[str, str]) -> dict:
    """One hit for the page: where and when, how close, how visible (mean over the queried parts), its thumbnail and
    the identity of its tracklet (None: none, or the store was never linked)."""
    return {
        "rank": rank,
        "detection_id": hit.detection_id,
        "video_id": hit.video_id,
        "camera_id": hit.camera_id,
        "frame_index": hit.frame_index,
        "timestamp": hit.timestamp,
        "time_utc": utc_text(hit.timestamp),
        "track_id": hit.track_id,
        "bbox": [float(v) for v in hit.bbox],
        "distance": finite(hit.distance),
        "visibility": _numbers(hit.visibility),
        "query_visibility": finite(hit.mean_visibility(parts)),
        "part_distances": _numbers(hit.part_distances),
        "thumbnail": thumbnail_url(hit.detection_id),
        "identity_id": identities.get(hit.track_id) if hit.track_id else None,
    }


def query_json(query: Query, result: QueryResult) -> dict:
    """What the page says of a query: its kind and stored id, and for an embedded crop its size and prompt points."""
    shown: dict = {"kind": result.kind}
    if result.kind == "tracklet":
        shown["track_id"] = query.track_id
    elif result.kind == "detection":
        shown["detection_id"] = query.detection_id
    elif result.kind == "identity":
        shown.update(identity_id=query.identity_id, own=result.own)
    if result.crop is not None:
        prompt = query.prompt
        shown.update(width=result.crop.shape[1], height=result.crop.shape[0],
                     positive=0 if prompt is None else prompt.target_points,
                     negative=0 if prompt is None else prompt.occluder_points)
    return shown


def person_json(person: PersonHit, rank: int, parts: Sequence[int] | None, identities: dict[str, str]) -> dict:
    """One person (tracklet) for the page: its closest detection, its time span (UTC), how many detections matched
    and its identity (None: none, or the store was never linked)."""
    return {
        "rank": rank,
        "track_id": person.track_id,
        "camera_id": person.camera_id,
        "distance": finite(person.distance),
        "t_start": person.t_start,
        "t_end": person.t_end,
        "span_utc": span_text(person.t_start, person.t_end),
        "matched": person.matched,
        "detections": person.detections,
        "identity_id": identities.get(person.track_id) if person.track_id else None,
        "best": hit_json(person.best, rank, parts, identities),
    }


def results_json(result: QueryResult) -> dict:
    """A search's results, best first: its people (``by`` "person") or, for a query of detections, its detections;
    ``no_close_match_above`` is the model's calibrated distance above which a result is no close match (or null)."""
    far, linked = {"no_close_match_above": result.no_close_match_above}, result.identities
    if result.people is None:
        return {"by": "detection", "hits": [hit_json(h, i, result.parts, linked) for i, h in enumerate(result.hits, 1)],
                **far}
    return {"by": "person", "people": [person_json(p, i, result.parts, linked) for i, p in enumerate(result.people, 1)],
            **far}


def tracklet_json(tracklet: TrackletSummary, best_detection_id: str | None) -> dict:
    """A pickable tracklet: camera, time span (UTC, with its date), size, best thumbnail and best detection (the
    crop keypoint prompts are drawn on; None when it has no thumbnail)."""
    return {
        "track_id": tracklet.track_id,
        "camera_id": tracklet.camera_id,
        "t_start": tracklet.t_start,
        "t_end": tracklet.t_end,
        "span_utc": span_text(tracklet.t_start, tracklet.t_end),
        "detections": tracklet.detections,
        "best_detection_id": best_detection_id,
        "thumbnail": tracklet_thumbnail_url(tracklet.track_id),
    }
