"""The store's LanceDB tables: connecting, opening and creating them safely, their schema versions and keys."""
from __future__ import annotations

import fcntl
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import lancedb
import pyarrow as pa

from storage.schema import (
    CASES,
    DETECTIONS,
    IDENTITIES,
    IDENTITY_EDITS,
    TRACKLETS,
    VIDEOS,
    StoreError,
    check_version,
    detections_schema,
    embedding_columns,
    embedding_shape,
    tracklets_schema,
    videos_schema,
)

_OPEN_ATTEMPTS = 8
# Field metadata declaring a table's key column. Without it, two writers that merge_insert the same new
# key at the same time both insert it (Lance sees no conflict between two appends); with it, the later
# commit conflicts and its merge is retried against the new version (see storage.writer's claims).
_PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}
# Lock file of a local store, held while a process checks for a table and creates it.
_CREATE_LOCK = ".kpr-create.lock"


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a local folder (a plain path or file://) rather than an object store."""
    return "://" not in uri or uri.startswith("file://")


def _object_store_reason(text: str) -> str:
    """The gist of a LanceDB error, whose object-store failures carry a whole Rust debug dump (kept when unknown)."""
    answered = re.search(r"<Code>(\w+)</Code>\s*<Message>([^<]*)</Message>", text)
    if answered:
        return f"the object store answered {answered[1]}: {answered[2]}"
    if "BadScheme" in text:
        return "the endpoint is plain http: set AWS_ALLOW_HTTP=true to allow it"
    refused = re.search(r'ConnectError\("([^"]+)", ([^,\s]+)', text)
    if refused:
        return f"{refused[1]} to {refused[2]} (is AWS_ENDPOINT_URL right?)"
    return text


def _table_names(db: lancedb.DBConnection) -> set[str]:
    """All table names of a connection, following list_tables pagination."""
    names: set[str] = set()
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names.update(page.tables)
        token = page.page_token
        if not token:
            return names


@contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Hold the local store's creation lock (none for object stores); the kernel drops it if the process dies.

    Lance does not create a table atomically: when two processes create the same new table at
    once, the later creation is committed as an overwrite of the earlier one, which fails the
    other's first write or, if that write got in before, wipes it (lance-format/lance#4451).
    """
    if not is_local(uri):
        yield
        return
    with open(Path(uri.removeprefix("file://")) / _CREATE_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def open_table(db: lancedb.DBConnection, name: str, schema: pa.Schema | None = None) -> lancedb.table.Table | None:
    """Open table ``name``, or create it with ``schema`` when missing (None when missing and no schema).

    Processes that may create take turns on a local store (see _creation_lock). A reader, or a
    creator on an object store, may find the folder of a table another process is creating right
    now, listed before its first commit can be opened: a failed open/create is retried briefly. A
    folder still without a committed version after that is what a creation killed before its first
    commit leaves (it holds no data), so it counts as missing: the table is created over it.
    """
    with nullcontext() if schema is None else _creation_lock(db.uri):
        for attempt in range(_OPEN_ATTEMPTS):
            last = attempt == _OPEN_ATTEMPTS - 1
            try:
                if name in _table_names(db):
                    try:
                        return db.open_table(name)
                    except ValueError:  # LanceDB's "table not found": the folder has no committed version
                        if not last:
                            raise
                return None if schema is None else db.create_table(name, schema=schema, exist_ok=True)
            except (ValueError, OSError, RuntimeError):
                if last:
                    raise
                time.sleep(0.05 * (attempt + 1))
    return None


def _keyed(schema: pa.Schema, key: str) -> pa.Schema:
    """``schema`` with column ``key`` declared as the table's primary key (see _PRIMARY_KEY)."""
    index = schema.get_field_index(key)
    return schema.set(index, schema.field(index).with_metadata(_PRIMARY_KEY))


def _declare_key(table: lancedb.table.Table, key: str) -> None:
    """Declare ``key`` as the primary key of a table created before keys were declared (no-op once it is)."""
    declared = (table.schema.field(key).metadata or {}).items()
    if not {(k.encode(), v.encode()) for k, v in _PRIMARY_KEY.items()} <= set(declared):
        table.update_field_metadata({"path": key, "metadata": _PRIMARY_KEY})


class StoreTables:
    """Handles on one store's tables: `videos` always; `detections` and `tracklets` once a write created them.

    The detections and tracklets tables are created by the first write that has such rows, so a
    store written before tracklets existed opens (read-only too) and simply has no tracklets.
    """

    def __init__(self, db: lancedb.DBConnection, uri: str, videos: lancedb.table.Table) -> None:
        self.db = db
        self.uri = uri
        self.videos = videos
        self._detections: lancedb.table.Table | None = None
        self._tracklets: lancedb.table.Table | None = None
        self._keys_declared: set[str] = set()
        self._shape: tuple[int, int] | None = None
        self._embedding_columns: tuple[str, ...] = ()
        self.detections()

    @classmethod
    def open(cls, uri: str, create: bool, read_consistency_s: float) -> "StoreTables":
        """Connect to the store at ``uri`` (creating its folder and videos table with ``create``); StoreError on failure."""
        if is_local(uri):
            path = Path(uri.removeprefix("file://"))
            if not create and not path.is_dir():
                raise StoreError(f"no store at {uri}")
            if create:
                try:
                    path.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create store at {uri}: {exc.strerror or exc}") from exc
        try:
            db = lancedb.connect(uri, read_consistency_interval=timedelta(seconds=read_consistency_s))
            videos = open_table(db, VIDEOS, _keyed(videos_schema(), "video_id") if create else None)
        except Exception as exc:  # lancedb surfaces I/O and object-store failures as assorted types
            raise StoreError(f"cannot open store at {uri}: {_object_store_reason(str(exc))}") from exc
        if videos is None:
            raise StoreError(f"no store at {uri}")
        check_version(videos.schema, VIDEOS, uri)
        return cls(db, uri, videos)

    def detections(self) -> lancedb.table.Table | None:
        """The detections table if it exists yet (it is created by the first write), version-checked."""
        if self._detections is None:
            self._adopt_detections(open_table(self.db, DETECTIONS))
        return self._detections

    def _adopt_detections(self, table: lancedb.table.Table | None) -> None:
        """Keep ``table`` as the detections table after checking its version and reading its (D, K)."""
        if table is not None:
            check_version(table.schema, DETECTIONS, self.uri)
            self._detections, self._shape = table, embedding_shape(table.schema)
            self._embedding_columns = embedding_columns(table.schema)

    @property
    def shape(self) -> tuple[int, int] | None:
        """(D, K) of the stored embeddings, or None before the first detection is written."""
        self.detections()
        return self._shape

    @property
    def embedding_columns(self) -> tuple[str, ...]:
        """The detections columns that hold the embeddings in the table's encoding (empty before the first write)."""
        self.detections()
        return self._embedding_columns

    def detections_for_write(self, dim: int, num_parts: int) -> lancedb.table.Table:
        """The detections table, created for (D, K) on first use; refuses a batch of another shape."""
        if self.detections() is None:
            self._adopt_detections(open_table(self.db, DETECTIONS, _keyed(detections_schema(dim, num_parts), "detection_id")))
        if self._shape != (dim, num_parts):
            raise StoreError(
                f"store at {self.uri} holds embeddings with D={self._shape[0]}, K={self._shape[1]}; "
                f"refusing a batch with D={dim}, K={num_parts} (use another store for another model shape)"
            )
        return self._detections

    def tracklets(self) -> lancedb.table.Table | None:
        """The tracklets table if it exists yet (created by the first write with tracklets), version-checked."""
        if self._tracklets is None:
            table = open_table(self.db, TRACKLETS)
            if table is not None:
                check_version(table.schema, TRACKLETS, self.uri)
            self._tracklets = table
        return self._tracklets

    def tracklets_for_write(self, dim: int, num_parts: int) -> lancedb.table.Table:
        """The tracklets table, created for (D, K) on first use; refuses tracklets of another shape than the store's."""
        held = self.shape if self.tracklets() is None else embedding_shape(self._tracklets.schema)
        if held not in (None, (dim, num_parts)):
            raise StoreError(
                f"store at {self.uri} holds embeddings with D={held[0]}, K={held[1]}; "
                f"refusing tracklets with D={dim}, K={num_parts}"
            )
        if self._tracklets is None:
            self._tracklets = open_table(self.db, TRACKLETS, _keyed(tracklets_schema(dim, num_parts), "track_id"))
            check_version(self._tracklets.schema, TRACKLETS, self.uri)
        return self._tracklets

    def keyed_videos(self) -> lancedb.table.Table:
        """The videos table ready for the writer's merges (checked once per handle): video_id declared its primary
        key, and the writer column that a table written before claims existed lacks added (empty)."""
        if "video_id" not in self._keys_declared:
            _declare_key(self.videos, "video_id")
            if "writer" not in self.videos.schema.names:
                self.videos.add_columns(videos_schema().field("writer"))
            self._keys_declared.add("video_id")
        return self.videos

    def all(self) -> dict[str, lancedb.table.Table]:
        """The tables that exist yet, by name (videos always; detections and tracklets once written; cases once an
        investigation was recorded; identities and their hand edits once linked), so that maintenance compacts and
        reports every one."""
        tables = {VIDEOS: self.videos, DETECTIONS: self.detections(), TRACKLETS: self.tracklets(),
                  **{name: open_table(self.db, name) for name in (CASES, IDENTITIES, IDENTITY_EDITS)}}
        return {name: table for name, table in tables.items() if table is not None}

    def drop_embedded(self) -> None:
        """Drop the detections and tracklets tables (every embedding); the videos table stays."""
        existing = _table_names(self.db)
        for name in (DETECTIONS, TRACKLETS):
            if name in existing:
                self.db.drop_table(name)
        self._detections = self._tracklets = self._shape = None
