"""Named investigations kept in the store: each case an append-only list of events (queries, results seen, marks,
notes), one row per event in the store's `cases` table.

A case is known by its name; its id is derived from the name, so two processes that start the same
case at once start one case. Events are only ever appended (one LanceDB append per call, which
never conflicts with another process's append), so nothing recorded is rewritten and two
investigators working on one case both land. The table is created by the first event, with its own
schema version, so stores that never held a case are not touched.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import lancedb
import pyarrow as pa

from storage import sql
from storage.schema import CASES, VERSION_KEY, NotFoundError, StoreError, check_version
from storage.tables import StoreTables, open_table

CASES_VERSION = 1
# What an event records: a query as asked, the results it showed, marks on results ("same" / "not"), a free note.
EVENT_KINDS = ("query", "results", "marks", "note")
MAX_NAME_LENGTH = 200


def cases_schema() -> pa.Schema:
    """Schema of the cases table: one row per event, keyed on event_id, with its own schema version."""
    fields = [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("case_id", pa.string(), nullable=False),
        pa.field("case_name", pa.string(), nullable=False),
        pa.field("at", pa.float64(), nullable=False),
        # Position of the event among those appended together (a query and its results share one `at`).
        pa.field("seq", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("payload", pa.string(), nullable=False),
        pa.field("host", pa.string()),
        pa.field("user", pa.string()),
    ]
    return pa.schema(fields, metadata={VERSION_KEY: str(CASES_VERSION)})


def case_id_of(name: str) -> str:
    """The id of the case named ``name`` (the same in every process, so a name is one case)."""
    return "case-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def check_name(name: str) -> str:
    """``name`` stripped, or StoreError when it is empty, too long or not printable."""
    stripped = name.strip()
    if not stripped or len(stripped) > MAX_NAME_LENGTH or not stripped.isprintable():
        raise StoreError(f"a case name is 1 to {MAX_NAME_LENGTH} printable characters, got {name!r}")
    return stripped


def who() -> tuple[str | None, str | None]:
    """(host, user) of this process, None where unknown."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return socket.gethostname() or None, user


@dataclass(frozen=True)
class CaseEvent:
    """One recorded event of a case: what happened (``kind``, ``payload``), when (epoch seconds) and by whom."""

    event_id: str
    case_id: str
    case_name: str
    at: float
    seq: int
    kind: str
    payload: dict
    host: str | None
    user: str | None


@dataclass(frozen=True)
class CaseSummary:
    """A case at a glance: its name and id, first and last event (epoch seconds) and its events by kind."""

    name: str
    case_id: str
    created_at: float
    last_at: float
    counts: dict[str, int] = field(default_factory=dict)


class Cases:
    """The cases of one store: append events to a case (creating it with its first event), list cases, read one."""

    def __init__(self, tables: StoreTables) -> None:
        self._tables = tables
        self.uri = tables.uri
        self._table: lancedb.table.Table | None = None

    @classmethod
    def open(cls, uri: str) -> "Cases":
        """The cases of the existing store at ``uri`` (StoreError when there is none)."""
        return cls(StoreTables.open(str(uri), create=False, read_consistency_s=0.0))

    def _cases_table(self, create: bool) -> lancedb.table.Table | None:
        """The cases table, created on first use with ``create``; None when missing without it."""
        if self._table is None:
            table = open_table(self._tables.db, CASES, cases_schema() if create else None)
            if table is not None:
                check_version(table.schema, CASES, self.uri, (CASES_VERSION,))
            self._table = table
        return self._table

    def append(self, name: str, events: Sequence[tuple[str, dict]]) -> list[CaseEvent]:
        """Record ``events`` ((kind, payload) pairs, in order) in case ``name``, creating the case if new; one append."""
        name = check_name(name)
        for kind, _ in events:
            if kind not in EVENT_KINDS:
                raise StoreError(f"unknown case event kind {kind!r} (known: {', '.join(EVENT_KINDS)})")
        at, (host, user) = time.time(), who()
        recorded = [CaseEvent(uuid.uuid4().hex, case_id_of(name), name, at, seq, kind, payload, host, user)
                    for seq, (kind, payload) in enumerate(events)]
        rows = [{**event.__dict__, "payload": json.dumps(event.payload, sort_keys=True)} for event in recorded]
        if rows:
            self._cases_table(create=True).add(pa.Table.from_pylist(rows, schema=cases_schema()))
        return recorded

    def exists(self, name: str) -> bool:
        """Whether a case named ``name`` has any event."""
        table = self._cases_table(create=False)
        return table is not None and table.count_rows(sql.equals("case_id", case_id_of(check_name(name)))) > 0

    def events(self, name: str) -> list[CaseEvent]:
        """Every event of case ``name`` in the order recorded; NotFoundError for a case that has none."""
        table = self._cases_table(create=False)
        where = sql.equals("case_id", case_id_of(check_name(name)))
        rows = [] if table is None else table.search().where(where).limit(None).to_arrow().to_pylist()
        if not rows:
            raise NotFoundError(f"no case named {name.strip()!r} in the store at {self.uri} (kpr case list shows them)")
        events = [CaseEvent(**{**row, "payload": json.loads(row["payload"])}) for row in rows]
        return sorted(events, key=lambda e: (e.at, e.seq, e.event_id))

    def summaries(self) -> list[CaseSummary]:
        """Every case of the store, most recently active first."""
        table = self._cases_table(create=False)
        if table is None:
            return []
        rows = table.search().select(["case_id", "case_name", "at", "kind"]).limit(None).to_arrow().to_pylist()
        by_case: dict[str, list[dict]] = {}
        for row in rows:
            by_case.setdefault(row["case_id"], []).append(row)
        summaries = [CaseSummary(found[0]["case_name"], case_id, min(r["at"] for r in found), max(r["at"] for r in found),
                                 dict(Counter(r["kind"] for r in found))) for case_id, found in by_case.items()]
        return sorted(summaries, key=lambda s: s.last_at, reverse=True)
