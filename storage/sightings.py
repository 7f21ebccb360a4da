"""Sightings: where and when a person was seen, one per tracklet (or per detection of no tracklet), for the journey.

A sighting is named by a tracklet id or by any detection id: a tracked detection stands for its whole tracklet, a
detection of no tracklet for itself alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from storage import sql
from storage.catalog import best_detections
from storage.schema import NotFoundError
from storage.store import Store

_TRACKLET_COLUMNS = ["track_id", "camera_id", "video_id", "t_start", "t_end", "n_detections", "best_detection_id",
                     "thumbnail"]
_DETECTION_COLUMNS = ["detection_id", "track_id", "camera_id", "video_id", "timestamp", "thumbnail"]


@dataclass(frozen=True)
class Sighting:
    """One passage past one camera: a tracklet (``track_id``) or a lone detection (``track_id`` None), with its time
    span (UTC epoch seconds), detection count, best detection and that detection's thumbnail."""

    camera_id: str
    video_id: str
    t_start: float
    t_end: float
    detections: int
    best_detection_id: str | None
    thumbnail: bytes | None
    track_id: str | None = None

    @property
    def key(self) -> str:
        """What names it: its tracklet id, else its detection id."""
        return self.track_id or self.best_detection_id or ""


def read_sightings(store: Store, ids: Sequence[str]) -> list[Sighting]:
    """The sighting each id names (a tracklet id, or a detection id: its tracklet, else itself), in the order of the
    ids, each once; NotFoundError naming the first id the store does not hold."""
    wanted = [i for i in dict.fromkeys(ids) if sql.storable(i)]
    tracklets = _stored_tracklets(store, wanted)
    detections = {row["detection_id"]: row for row in
                  store.detections_by_ids([i for i in wanted if i not in tracklets], _DETECTION_COLUMNS).to_pylist()}
    track_of = {i: detections[i]["track_id"] if i in detections else i for i in wanted if i not in tracklets}
    tracklets.update(_stored_tracklets(store, [t for t in track_of.values() if t and t not in tracklets]))
    tracklets.update(_tracklets_of_detections(store, [t for t in track_of.values() if t and t not in tracklets]))
    found: dict[str, Sighting] = {}
    for given in ids:
        track = given if given in tracklets else track_of.get(given)
        if track in tracklets:
            sighting = tracklets[track]
        elif given in detections:
            row = detections[given]
            sighting = Sighting(row["camera_id"], row["video_id"], row["timestamp"], row["timestamp"], 1, given,
                                row["thumbnail"])
        else:
            raise NotFoundError(f"unknown tracklet or detection id {given!r}")
        found.setdefault(sighting.key, sighting)
    return list(found.values())


def _stored_tracklets(store: Store, track_ids: Sequence[str]) -> dict[str, Sighting]:
    """The sightings of the ``track_ids`` the tracklets table holds (a missing thumbnail: its best detection's)."""
    if not track_ids:
        return {}
    rows = store.list_tracklets(sql.is_in("track_id", track_ids), columns=_TRACKLET_COLUMNS).to_pylist()
    missing = best_detections(store, [row["track_id"] for row in rows if not row["thumbnail"]])
    return {row["track_id"]: Sighting(row["camera_id"], row["video_id"], row["t_start"], row["t_end"],
                                      row["n_detections"], *_best(row, missing), row["track_id"]) for row in rows}


def _best(row: dict, chosen: dict[str, tuple[str, bytes]]) -> tuple[str | None, bytes | None]:
    """A stored tracklet's best detection and thumbnail, or those chosen from its detections when it kept none."""
    if row["thumbnail"] or row["track_id"] not in chosen:
        return row["best_detection_id"], row["thumbnail"]
    return chosen[row["track_id"]]


def _tracklets_of_detections(store: Store, track_ids: Sequence[str]) -> dict[str, Sighting]:
    """Sightings of tracklets known only from their detections' track ids (a store written before tracklets were
    stored): their span and count from the detections, their best detection as ingestion picks it."""
    if not track_ids:
        return {}
    rows: pa.Table = store.query_detections(sql.is_in("track_id", track_ids), ["track_id", "camera_id", "video_id",
                                                                                 "timestamp"])
    if not rows.num_rows:
        return {}
    grouped = rows.group_by("track_id").aggregate([("camera_id", "min"), ("video_id", "min"), ("timestamp", "min"),
                                                   ("timestamp", "max"), ("timestamp", "count")]).to_pylist()
    best = best_detections(store, [row["track_id"] for row in grouped])
    return {row["track_id"]: Sighting(row["camera_id_min"], row["video_id_min"], row["timestamp_min"],
                                      row["timestamp_max"], row["timestamp_count"], *best.get(row["track_id"],
                                                                                              (None, None)),
                                      row["track_id"]) for row in grouped}
