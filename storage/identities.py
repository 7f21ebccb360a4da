"""Global identities in the store: people across cameras, each the tracklets linked into it, in the `identities` table.

One row per identity, keyed on identity_id: its tracklets with their link confidence, per camera the first and last
time it was seen there, a representative thumbnail (that of its tracklet with the most detections), the model and
run that linked it, and its history (created, relinked: JSON events). A run's identities are written in one commit
that also removes the identities the run no longer finds, so a store holds one run's identities whole, whatever
crashes. An identity's id is derived from its earliest tracklet, so re-linking the same store gives the same ids.
The table is created by the first run, with its own schema version, so stores never linked are not touched.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import lancedb
import pyarrow as pa

from storage.schema import VERSION_KEY, check_version
from storage.tables import StoreTables, open_table

IDENTITIES = "identities"
IDENTITIES_VERSION = 1


def identities_schema() -> pa.Schema:
    """Schema of the identities table: one row per identity, keyed on identity_id, with its own schema version."""
    tracklet = pa.struct([pa.field("track_id", pa.string(), nullable=False),
                          pa.field("camera_id", pa.string(), nullable=False),
                          pa.field("video_id", pa.string(), nullable=False),
                          pa.field("t_start", pa.float64(), nullable=False),
                          pa.field("t_end", pa.float64(), nullable=False),
                          pa.field("confidence", pa.float32(), nullable=False)])
    camera = pa.struct([pa.field("camera_id", pa.string(), nullable=False),
                        pa.field("first_seen", pa.float64(), nullable=False),
                        pa.field("last_seen", pa.float64(), nullable=False)])
    fields = [
        pa.field("identity_id", pa.string(), nullable=False),
        pa.field("tracklets", pa.list_(tracklet), nullable=False),
        pa.field("cameras", pa.list_(camera), nullable=False),
        pa.field("first_seen", pa.float64(), nullable=False),
        pa.field("last_seen", pa.float64(), nullable=False),
        pa.field("best_track_id", pa.string(), nullable=False),
        pa.field("thumbnail", pa.binary()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("linked_at", pa.float64(), nullable=False),
        pa.field("history", pa.string(), nullable=False),
    ]
    return pa.schema(fields, metadata={VERSION_KEY: str(IDENTITIES_VERSION)})


def identity_id_of(earliest_track_id: str) -> str:
    """The id of the identity whose earliest tracklet is ``earliest_track_id`` (the same in every run)."""
    return "person-" + hashlib.sha256(earliest_track_id.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LinkedTracklet:
    """One tracklet of an identity: where and when it was seen, and how confidently it is linked."""

    track_id: str
    camera_id: str
    video_id: str
    t_start: float
    t_end: float
    confidence: float


@dataclass(frozen=True)
class Identity:
    """One identity as a run found it: its tracklets (any order) and its representative tracklet and thumbnail."""

    tracklets: Sequence[LinkedTracklet]
    best_track_id: str
    thumbnail: bytes | None

    @property
    def identity_id(self) -> str:
        """Its stable id, from its earliest tracklet (start time, then id)."""
        return identity_id_of(min(self.tracklets, key=lambda t: (t.t_start, t.track_id)).track_id)


def _row(identity: Identity, model_id: str, run_id: str, at: float, history: list[dict]) -> dict:
    """The identities-table row of ``identity``."""
    ordered = sorted(identity.tracklets, key=lambda t: (t.t_start, t.track_id))
    seen: dict[str, list[float]] = {}
    for tracklet in ordered:
        span = seen.setdefault(tracklet.camera_id, [tracklet.t_start, tracklet.t_end])
        span[0], span[1] = min(span[0], tracklet.t_start), max(span[1], tracklet.t_end)
    cameras = sorted(({"camera_id": c, "first_seen": s, "last_seen": e} for c, (s, e) in seen.items()),
                     key=lambda c: (c["first_seen"], c["camera_id"]))
    return {"identity_id": identity.identity_id, "tracklets": [t.__dict__ for t in ordered], "cameras": cameras,
            "first_seen": ordered[0].t_start, "last_seen": max(t.t_end for t in ordered),
            "best_track_id": identity.best_track_id, "thumbnail": identity.thumbnail, "model_id": model_id,
            "run_id": run_id, "linked_at": at, "history": json.dumps(history)}


class Identities:
    """The identities of one store: replace them with a run's, read them."""

    def __init__(self, tables: StoreTables) -> None:
        self._tables = tables
        self.uri = tables.uri

    @classmethod
    def open(cls, uri: str) -> "Identities":
        """The identities of the existing store at ``uri`` (StoreError when there is none)."""
        return cls(StoreTables.open(str(uri), create=False, read_consistency_s=0.0))

    def _table(self, create: bool) -> lancedb.table.Table | None:
        """The identities table, created on first use with ``create``; None when missing without it."""
        table = open_table(self._tables.db, IDENTITIES, identities_schema() if create else None)
        if table is not None:
            check_version(table.schema, IDENTITIES, self.uri, (IDENTITIES_VERSION,))
        return table

    def replace(self, identities: Sequence[Identity], model_id: str, run_id: str) -> dict[str, int]:
        """Make ``identities`` the store's, in one commit: each keeps the history of the identity of the same id
        (a "relinked" event added when its tracklets changed), new ones start theirs, those not found any more go.
        Returns how many were created, relinked, kept as they were and removed."""
        at = time.time()
        before = {row["identity_id"]: row for row in self.rows(["identity_id", "tracklets", "history"])}
        counts = {"created": 0, "relinked": 0, "unchanged": 0, "removed": 0}
        rows = []
        for identity in identities:
            old = before.pop(identity.identity_id, None)
            if old is None:
                history, change = [], "created"
            else:
                history = json.loads(old["history"])
                same = {t["track_id"] for t in old["tracklets"]} == {t.track_id for t in identity.tracklets}
                change = "unchanged" if same else "relinked"
            counts[change] += 1
            if change != "unchanged":
                history.append({"change": change, "run_id": run_id, "at": at, "tracklets": len(identity.tracklets)})
            rows.append(_row(identity, model_id, run_id, at, history))
        counts["removed"] = len(before)
        table = self._table(create=True)
        (table.merge_insert("identity_id").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete().execute(pa.Table.from_pylist(rows, schema=identities_schema())))
        return counts

    def rows(self, columns: Sequence[str] | None = None) -> list[dict]:
        """Every identity row (only ``columns`` when given), earliest first seen first; [] before the first run."""
        table = self._table(create=False)
        if table is None:
            return []
        query = table.search()
        if columns is not None:
            query = query.select(list(dict.fromkeys([*columns, "first_seen", "identity_id"])))
        found = query.limit(None).to_arrow().to_pylist()
        return sorted(found, key=lambda row: (row["first_seen"], row["identity_id"]))
