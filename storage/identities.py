"""Global identities in the store: people across cameras, each the tracklets linked into it, in the `identities` table,
and the hand edits that linking must respect, in the `identity_edits` table.

One row per identity, keyed on identity_id: its tracklets with their link confidence, per camera the first and last
time it was seen there, a representative thumbnail (that of its tracklet with the most detections), the model and
run that linked it, and its history (created, relinked, merged, split: JSON events). A run's identities are written
in one commit that also removes the identities the run no longer finds, so a store holds one run's identities whole,
whatever crashes. Ids are stable: an identity keeps the id of the previous identity it shares the most tracklets
with; a new one takes an id derived from its earliest tracklet. A hand merge or split is recorded in the edits table
first, then applied to the identities, so that an interrupted edit is still applied by the next linking run.
Both tables are created on first use, with their own schema version, so stores never linked are not touched.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from storage import sql
from storage.cases import who
from storage.schema import IDENTITIES, IDENTITY_EDITS, VERSION_KEY, NotFoundError, StoreError, check_version
from storage.tables import StoreTables, open_table

IDENTITIES_VERSION = 1
EDITS_VERSION = 1
_ID_BATCH = 1000
# The linking settings (JSON) of the run that wrote a row; added after the table's first release, so a table that
# lacks it gets it (empty) when first opened for writing.
_SETTINGS = pa.field("settings", pa.string())


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
        _SETTINGS,
    ]
    return pa.schema(fields, metadata={VERSION_KEY: str(IDENTITIES_VERSION)})


def edits_schema() -> pa.Schema:
    """Schema of the hand edits: one row per merge (groups: [the tracklets merged]) or split (groups: [the tracklets
    taken off, those left]), in the order made, with who made it and why."""
    fields = [pa.field("edit_id", pa.string(), nullable=False),
              pa.field("kind", pa.string(), nullable=False),
              pa.field("identity_ids", pa.list_(pa.string()), nullable=False),
              pa.field("groups", pa.list_(pa.list_(pa.string())), nullable=False),
              pa.field("note", pa.string(), nullable=False),
              pa.field("at", pa.float64(), nullable=False),
              pa.field("host", pa.string()),
              pa.field("user", pa.string())]
    return pa.schema(fields, metadata={VERSION_KEY: str(EDITS_VERSION)})


def identity_id_of(earliest_track_id: str, attempt: int = 0) -> str:
    """The id a new identity whose earliest tracklet is ``earliest_track_id`` takes (``attempt`` > 0: the next
    candidates, when the first is taken)."""
    text = earliest_track_id if attempt == 0 else f"{earliest_track_id}#{attempt}"
    return "person-" + hashlib.sha256(text.encode()).hexdigest()[:16]


class IdentityEditError(StoreError):
    """A hand merge or split that cannot be made (unknown identity or tracklet, nothing to merge or split)."""


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
class MadeBy:
    """The linking run that made identities: its model, run id and settings (JSON text)."""

    model_id: str
    run_id: str
    settings: str | None

    @classmethod
    def of(cls, row: dict) -> "MadeBy":
        """Who made an identities-table row."""
        return cls(row["model_id"], row["run_id"], row.get("settings"))


@dataclass(frozen=True)
class Identity:
    """One identity as a run found it: its tracklets (any order) and its representative tracklet and thumbnail."""

    tracklets: Sequence[LinkedTracklet]
    best_track_id: str
    thumbnail: bytes | None


def _row(identity: Identity, identity_id: str, made_by: "MadeBy", at: float, history: list[dict]) -> dict:
    """The identities-table row of ``identity``."""
    ordered = sorted(identity.tracklets, key=lambda t: (t.t_start, t.track_id))
    seen: dict[str, list[float]] = {}
    for tracklet in ordered:
        span = seen.setdefault(tracklet.camera_id, [tracklet.t_start, tracklet.t_end])
        span[0], span[1] = min(span[0], tracklet.t_start), max(span[1], tracklet.t_end)
    cameras = sorted(({"camera_id": c, "first_seen": s, "last_seen": e} for c, (s, e) in seen.items()),
                     key=lambda c: (c["first_seen"], c["camera_id"]))
    return {"identity_id": identity_id, "tracklets": [asdict(t) for t in ordered], "cameras": cameras,
            "first_seen": ordered[0].t_start, "last_seen": max(t.t_end for t in ordered),
            "best_track_id": identity.best_track_id, "thumbnail": identity.thumbnail, "model_id": made_by.model_id,
            "run_id": made_by.run_id, "linked_at": at, "history": json.dumps(history), "settings": made_by.settings}


def _membership(rows: pa.Table) -> dict[str, str]:
    """Track id -> identity id of every tracklet of identity ``rows`` (identity_id and tracklets columns)."""
    tracklets = rows["tracklets"].combine_chunks()
    owners = rows["identity_id"].combine_chunks().take(pc.list_parent_indices(tracklets))
    return dict(zip(pc.list_flatten(tracklets).field("track_id").to_pylist(), owners.to_pylist()))


def _tracks(row: dict) -> set[str]:
    return {t["track_id"] for t in row["tracklets"]}


def assign_ids(groups: Sequence[Sequence[LinkedTracklet]], before: dict[str, set[str]]) -> list[str]:
    """Ids for identities of ``groups``: each previous identity's id (``before``: id -> track ids) goes to the group
    that shares the most tracklets with it (largest overlaps first); the others take ids derived from their earliest
    tracklet (start time, then id), never one of ``before`` nor one given in this call."""
    owner = {track_id: identity_id for identity_id, tracks in before.items() for track_id in tracks}
    overlaps: dict[tuple[int, str], int] = {}
    for number, group in enumerate(groups):
        for tracklet in group:
            if tracklet.track_id in owner:
                key = (number, owner[tracklet.track_id])
                overlaps[key] = overlaps.get(key, 0) + 1
    ids: list[str | None] = [None] * len(groups)
    taken: set[str] = set()
    for (number, identity_id), _ in sorted(overlaps.items(), key=lambda item: (-item[1], item[0][1], item[0][0])):
        if ids[number] is None and identity_id not in taken:
            ids[number] = identity_id
            taken.add(identity_id)
    for number, group in enumerate(groups):
        earliest = min(group, key=lambda t: (t.t_start, t.track_id)).track_id
        attempt = 0
        while ids[number] is None:
            candidate = identity_id_of(earliest, attempt)
            if candidate not in taken and candidate not in before:
                ids[number] = candidate
                taken.add(candidate)
            attempt += 1
    return ids


class Identities:
    """The identities of one store: replace them with a run's, edit them by hand, read them."""

    def __init__(self, tables: StoreTables) -> None:
        self._tables = tables
        self.uri = tables.uri
        self._membership: tuple[int, dict[str, str]] | None = None
        self._handle: lancedb.table.Table | None = None

    @classmethod
    def open(cls, uri: str) -> "Identities":
        """The identities of the existing store at ``uri`` (StoreError when there is none)."""
        return cls(StoreTables.open(str(uri), create=False, read_consistency_s=0.0))

    def _table(self, create: bool) -> lancedb.table.Table | None:
        """The identities table, created on first use with ``create``; None when missing without it. Kept once
        found (every search asks it for its hits' identities; it sees later commits by itself)."""
        if self._handle is None:
            self._handle = open_table(self._tables.db, IDENTITIES, identities_schema() if create else None)
            if self._handle is not None:
                check_version(self._handle.schema, IDENTITIES, self.uri, (IDENTITIES_VERSION,))
        if create and _SETTINGS.name not in self._handle.schema.names:
            self._handle.add_columns(_SETTINGS)
        return self._handle

    def _edits_table(self, create: bool) -> lancedb.table.Table | None:
        """The hand edits table, created on first use with ``create``; None when missing without it."""
        table = open_table(self._tables.db, IDENTITY_EDITS, edits_schema() if create else None)
        if table is not None:
            check_version(table.schema, IDENTITY_EDITS, self.uri, (EDITS_VERSION,))
        return table

    def describe(self, groups: Sequence[Sequence[LinkedTracklet]]) -> list[Identity]:
        """Identities of ``groups``, each represented by its tracklet with the most detections (then the earliest)
        and that tracklet's thumbnail, read from the tracklets table."""
        table = self._tables.tracklets()
        if table is None:
            raise StoreError(f"store {self.uri} holds no tracklets: its identities cannot be described")
        wanted = [t.track_id for group in groups for t in group]
        # Many tracklets: one read of two columns of the whole table beats a filtered read per batch.
        query = table.search().where(sql.is_in("track_id", wanted)) if len(wanted) <= _ID_BATCH else table.search()
        rows = query.select(["track_id", "n_detections"]).limit(None).to_arrow()
        counts = dict(zip(rows["track_id"].to_pylist(), rows["n_detections"].to_pylist()))
        best = [min(group, key=lambda t: (-counts.get(t.track_id, 0), t.t_start, t.track_id)).track_id
                for group in groups]
        thumbnails: dict[str, bytes | None] = {}
        for start in range(0, len(best), _ID_BATCH):
            rows = (table.search().where(sql.is_in("track_id", best[start:start + _ID_BATCH]))
                    .select(["track_id", "thumbnail"]).limit(None).to_arrow())
            thumbnails.update(zip(rows["track_id"].to_pylist(), rows["thumbnail"].to_pylist()))
        return [Identity(list(group), chosen, thumbnails.get(chosen)) for group, chosen in zip(groups, best)]

    def replace(self, groups: Sequence[Sequence[LinkedTracklet]], made_by: MadeBy) -> dict[str, int]:
        """Make the identities of ``groups`` (a linking run's) the store's, in one commit that writes only the rows
        that changed: ids as assign_ids gives them; each keeps the history of the identity of its id (a "relinked"
        event added when its tracklets changed), new ones start theirs, those not found any more go. Returns how
        many were created, relinked, kept as they were and removed."""
        at = time.time()
        before = {row["identity_id"]: row for row in self.rows(["identity_id", "tracklets", "history"])}
        ids = assign_ids(groups, {identity_id: _tracks(row) for identity_id, row in before.items()})
        counts = {"created": 0, "relinked": 0, "unchanged": 0, "removed": 0}
        changed, histories = [], []
        for group, identity_id in zip(groups, ids):
            old = before.pop(identity_id, None)
            tracks = {t.track_id for t in group}
            change = "created" if old is None else "unchanged" if _tracks(old) == tracks else "relinked"
            counts[change] += 1
            if change == "unchanged":
                continue
            event = {"change": change, "run_id": made_by.run_id, "at": at, "tracklets": len(tracks)}
            if old is not None:
                event |= {"joined": len(tracks - _tracks(old)), "left": len(_tracks(old) - tracks)}
            changed.append((group, identity_id))
            histories.append([*([] if old is None else json.loads(old["history"])), event])
        described = self.describe([group for group, _ in changed])
        self._write([_row(identity, identity_id, made_by, at, history)
                     for identity, (_, identity_id), history in zip(described, changed, histories)], list(before))
        counts["removed"] = len(before)
        return counts

    def _write(self, rows: list[dict], removed: Sequence[str]) -> None:
        """Upsert ``rows`` and delete the identities ``removed``, in one commit."""
        if not rows and not removed:
            return
        merge = self._table(create=True).merge_insert("identity_id").when_matched_update_all()
        merge = merge.when_not_matched_insert_all()
        if removed:
            merge = merge.when_not_matched_by_source_delete(sql.is_in("identity_id", removed))
        merge.execute(pa.Table.from_pylist(rows, schema=identities_schema()))

    def table(self, columns: Sequence[str] | None = None, where: str | None = None) -> pa.Table | None:
        """The identity rows as an Arrow table (only ``columns`` when given; only those matching ``where``), earliest
        first seen first; None before the first run."""
        table = self._table(create=False)
        if table is None:
            return None
        query = table.search()
        if where is not None:
            query = query.where(where)
        if columns is not None:  # (a column added after the table was made may be missing)
            held = set(table.schema.names)
            query = query.select([c for c in dict.fromkeys([*columns, "first_seen", "identity_id"]) if c in held])
        return query.limit(None).to_arrow().sort_by([("first_seen", "ascending"), ("identity_id", "ascending")])

    def rows(self, columns: Sequence[str] | None = None, where: str | None = None) -> list[dict]:
        """The identity rows as dicts (see table); [] before the first run."""
        found = self.table(columns, where)
        return [] if found is None else found.to_pylist()

    def get(self, identity_id: str) -> dict:
        """The row of identity ``identity_id``; NotFoundError when the store has no such identity."""
        found = self.rows(where=sql.equals("identity_id", identity_id)) if sql.storable(identity_id) else []
        if not found:
            raise NotFoundError(f"no identity {identity_id!r} in store {self.uri} (kpr list --db {self.uri} "
                                f"identities lists them; kpr link makes them)")
        return found[0]

    def of_tracklets(self, track_ids: Sequence[str]) -> dict[str, str]:
        """The identity of each of ``track_ids`` that has one (track id -> identity id): from a map of every linked
        tracklet, read again only when the table changed (a search names each hit's identity)."""
        table = self._table(create=False)
        if table is None:
            return {}
        version = table.version
        if self._membership is None or self._membership[0] != version:
            found = table.search().select(["identity_id", "tracklets"]).limit(None).to_arrow()
            self._membership = (version, _membership(found))
        known = self._membership[1]
        return {track_id: known[track_id] for track_id in track_ids if track_id in known}

    def edits(self) -> list[dict]:
        """Every hand edit, in the order made."""
        table = self._edits_table(create=False)
        return [] if table is None else sorted(table.search().limit(None).to_arrow().to_pylist(),
                                                key=lambda edit: (edit["at"], edit["edit_id"]))

    def _record(self, kind: str, identity_ids: Sequence[str], groups: Sequence[Sequence[str]], note: str) -> dict:
        """Append one hand edit to the edits table; the history event that tells of it."""
        at, (host, user) = time.time(), who()
        edit = {"edit_id": uuid.uuid4().hex, "kind": kind, "identity_ids": list(identity_ids),
                "groups": [sorted(group) for group in groups], "note": note, "at": at, "host": host, "user": user}
        self._edits_table(create=True).add(pa.Table.from_pylist([edit], schema=edits_schema()))
        return {"change": kind, "by": "hand", "edit_id": edit["edit_id"], "at": at, "user": user, "note": note}

    def merge(self, identity_ids: Sequence[str], note: str = "") -> dict:
        """Merge identities ``identity_ids`` by hand into the first of them; later linking runs keep their tracklets
        together. Returns the merged identity's row."""
        wanted = list(dict.fromkeys(identity_ids))
        if len(wanted) < 2:
            raise IdentityEditError(f"a merge needs at least two different identities, got {len(wanted)}")
        rows = [self.get(identity_id) for identity_id in wanted]
        tracklets = [LinkedTracklet(**t) for row in rows for t in row["tracklets"]]
        event = self._record("merge", wanted, [[t.track_id for t in tracklets]], note)
        keep = rows[0]
        identity = Identity(tracklets, keep["best_track_id"], keep["thumbnail"])
        merged = _row(identity, keep["identity_id"], MadeBy.of(keep), event["at"],
                      [*json.loads(keep["history"]), event | {"from": wanted[1:]}])
        self._write([merged], wanted[1:])
        return merged

    def split(self, identity_id: str, track_ids: Sequence[str], note: str = "") -> tuple[dict, dict]:
        """Split tracklets ``track_ids`` off identity ``identity_id`` by hand into a new identity; later linking
        runs keep the two apart. Returns (the identity as it stays, the new one)."""
        row = self.get(identity_id)
        held = {t["track_id"]: LinkedTracklet(**t) for t in row["tracklets"]}
        taken = list(dict.fromkeys(track_ids))
        strangers = [t for t in taken if t not in held]
        if strangers:
            raise IdentityEditError(f"tracklet {strangers[0]!r} is not in identity {identity_id}")
        if not taken or len(taken) == len(held):
            raise IdentityEditError(f"a split takes some but not all of identity {identity_id}'s {len(held)} "
                                    f"tracklets, got {len(taken)}")
        left = [t for t in held if t not in taken]
        event = self._record("split", [identity_id], [taken, left], note)
        kept, new = self.describe([[held[t] for t in left], [held[t] for t in taken]])
        new_id = assign_ids([new.tracklets], {known["identity_id"]: set() for known in self.rows(["identity_id"])})[0]
        rows = [_row(kept, identity_id, MadeBy.of(row), event["at"],
                     [*json.loads(row["history"]), event | {"into": new_id}]),
                _row(new, new_id, MadeBy.of(row), event["at"], [event | {"from": identity_id}])]
        self._write(rows, [])
        return rows[0], rows[1]
