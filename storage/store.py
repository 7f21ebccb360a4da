"""LanceDB-backed store of detections, tracklets and video ingestion status, written once per video, idempotently."""
from __future__ import annotations

import fcntl
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lancedb
from lancedb.index import Bitmap, BTree, IvfHnswSq, IvfPq
from lancedb.query import ColumnOrdering
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kpr_model.distance import ReIDEmbeddings
from storage import sql
from storage.schema import (
    DETECTIONS,
    KPR_KIND,
    TRACKLETS,
    VIDEOS,
    NotFoundError,
    StoreError,
    check_version,
    detections_schema,
    detections_table,
    embedding_shape,
    embeddings_of,
    tracklets_schema,
    tracklets_table,
    videos_schema,
)

_REQUIRED_VIDEO_KEYS = ("video_id", "uri", "camera_id", "model_id")
_ID_BATCH = 1000
_OPEN_ATTEMPTS = 8

# Scalar indexes per table: key lookups, video rewrites, tracklets, camera/time filters.
_SCALAR_INDEXES = {
    VIDEOS: (("video_id", BTree),),
    DETECTIONS: (("detection_id", BTree), ("video_id", BTree), ("track_id", BTree), ("timestamp", BTree),
                 ("camera_id", Bitmap)),
    TRACKLETS: (("track_id", BTree), ("video_id", BTree)),
}
# Field metadata of the videos table's `model_id` column that records the store's model (see Store.model).
STORE_MODEL_KEY = "kpr:store_model"
# Field metadata of the `vector` column that records how its ANN index was built (and on how many rows).
VECTOR_INDEX_KEY = "kpr:vector_index"
VECTOR_INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ")
# Chosen by bench/search_bench.py at 1M rows, D=128 (see bench/README.md): IVF_PQ with D/4 sub-vectors
# beat D/8 on recall and IVF_HNSW_SQ on latency and build time.
DEFAULT_VECTOR_INDEX = "IVF_PQ"
DEFAULT_NPROBES = 10
DEFAULT_MAX_NPROBES = 200
DEFAULT_REFINE_FACTOR = 2
DEFAULT_FLAT_MAX_ROWS = 50_000
# An index trained on n rows is retrained once the table holds this many times n (IVF partitions ~ sqrt(rows)).
_RETRAIN_GROWTH = 2.0
_ROWS_PER_PARTITION = 256
# "Keep every old version": an age no version of a store can reach.
_KEEP_ALL_VERSIONS = timedelta(days=365_000)
# Field metadata declaring a table's key column. Without it, two writers that merge_insert the same new
# key at the same time both insert it (Lance sees no conflict between two appends); with it, the later
# commit conflicts and its merge is retried, so it updates the row instead of storing it twice.
_PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}
# Lock file of a local store, held while a process checks for a table and creates it.
_CREATE_LOCK = ".kpr-create.lock"
LIST_COLUMNS = ("detection_id", "video_id", "camera_id", "frame_index", "timestamp", "track_id", "bbox",
                "det_score", "thumbnail")


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
    if not _is_local(uri):
        yield
        return
    with open(Path(uri.removeprefix("file://")) / _CREATE_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _open_table(db: lancedb.DBConnection, name: str, schema: pa.Schema | None = None) -> lancedb.table.Table | None:
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


def _is_local(uri: str) -> bool:
    """Whether ``uri`` names a local folder (a plain path or file://) rather than an object store."""
    return "://" not in uri or uri.startswith("file://")


@dataclass(frozen=True)
class _RowKind:
    """A per-video keyed table of embedded rows (detections or tracklets): its name, key and builders."""

    table: str
    key: str
    schema: Callable[[int, int], pa.Schema]
    build: Callable[[Sequence[dict], ReIDEmbeddings], pa.Table]


_DETECTION_ROWS = _RowKind(DETECTIONS, "detection_id", detections_schema, detections_table)
_TRACKLET_ROWS = _RowKind(TRACKLETS, "track_id", tracklets_schema, tracklets_table)


def _as_table(rows: pa.Table | Sequence[dict] | None, kind: _RowKind) -> pa.Table | None:
    """Rows given as an Arrow table or as dicts (metadata + vector, parts, visibility) as an Arrow table; None when empty."""
    if isinstance(rows, pa.Table):
        return rows if rows.num_rows else None
    if not rows:
        return None
    try:
        embeddings = embeddings_of(rows)
    except (KeyError, ValueError) as exc:
        raise StoreError(f"{kind.table} dicts need vector [D], parts [K, D] and visibility [K]: {exc!r}") from exc
    return kind.build(rows, embeddings)


def _conform(video: dict, table: pa.Table, kind: _RowKind) -> pa.Table:
    """``table`` cast to its store schema after checking it belongs to ``video`` (same video and model, unique keys)."""
    video_id = video.get("video_id")
    try:
        dim = table.schema.field("vector").type.list_size
        num_parts = table.schema.field("visibility").type.list_size
        schema = kind.schema(dim, num_parts)
        table = table.select(schema.names).cast(schema)
    except (AttributeError, KeyError, ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StoreError(f"video {video_id}: {kind.table} do not fit the store schema: {exc}") from exc
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise StoreError(f"video {video_id}: {kind.table} column {field.name} has nulls")
    if not pc.all(pc.equal(table["video_id"], video_id)).as_py():
        raise StoreError(f"video {video_id}: {kind.table} carry another video_id")
    if not pc.all(pc.equal(table["model_id"], video.get("model_id"))).as_py():
        raise StoreError(f"video {video_id}: {kind.table} carry another model_id than the video row")
    if pc.count_distinct(table[kind.key]).as_py() != table.num_rows:
        raise StoreError(f"video {video_id}: duplicate {kind.key} in the batch")
    return table


def _check_video(video: dict) -> None:
    """Refuse a video dict without the keys every video row needs."""
    missing = [key for key in _REQUIRED_VIDEO_KEYS if video.get(key) is None]
    if missing:
        raise StoreError(f"video dict lacks {', '.join(missing)}")


def _video_row(video: dict, status: str, error: str | None, n_detections: int) -> pa.Table:
    """One videos-table row (as a one-row Arrow table) from the caller's video dict."""
    _check_video(video)
    row = {
        "video_id": video["video_id"],
        "uri": video["uri"],
        "camera_id": video["camera_id"],
        "start_time": video.get("start_time"),
        "duration": video.get("duration"),
        "num_frames": video.get("num_frames"),
        "status": status,
        "error": error,
        "n_detections": n_detections,
        "model_id": video["model_id"],
        "run_id": video.get("run_id"),
        "ingested_at": time.time(),
    }
    return pa.Table.from_pylist([row], schema=videos_schema())


@dataclass(frozen=True)
class AnnSettings:
    """How the ANN stage trades latency for recall; ignored while the table has no vector index.

    ``nprobes``: IVF partitions always searched; ``max_nprobes``: partitions searched at most when a
    filter leaves fewer than ``limit`` rows in the first ones (each query pays for this bound even
    when unfiltered: +15 ms at 1,000 vs 200 at 1M rows); ``refine_factor``: how many times ``limit``
    PQ candidates are re-scored with the exact global vector (None: no refinement);
    ``flat_max_rows``: a filter that keeps at most this many rows is answered by an exact scan of
    them instead (probing stops at the first partitions holding enough filtered rows, which
    misses many of a selective filter's true neighbours; the scan costs 22-37 ms for 6k-60k rows at 1M).
    """

    nprobes: int = DEFAULT_NPROBES
    max_nprobes: int = DEFAULT_MAX_NPROBES
    refine_factor: int | None = DEFAULT_REFINE_FACTOR
    flat_max_rows: int = DEFAULT_FLAT_MAX_ROWS


def _sub_vectors(dim: int, dims_per_sub_vector: int = 4) -> int:
    """PQ sub-vector count for dimension ``dim``: the largest divisor of ``dim`` giving >= ``dims_per_sub_vector`` dims each."""
    return max(n for n in range(1, dim + 1) if dim % n == 0 and dim // n >= min(dims_per_sub_vector, dim))


def vector_index_plan(rows: int, dim: int, kind: str = DEFAULT_VECTOR_INDEX, num_partitions: int | None = None,
                      num_sub_vectors: int | None = None) -> dict:
    """Parameters of the ANN index for ``rows`` vectors of dimension ``dim``: ~sqrt(rows) IVF partitions, D/4 PQ sub-vectors.

    Partitions are capped at one per 256 rows (LanceDB trains no more on smaller tables). Returns a
    JSON-able dict (type, num_partitions, num_sub_vectors for IVF_PQ, trained_rows) that
    `vector_index_config` turns into a LanceDB config and the table records next to its index.
    """
    if kind not in VECTOR_INDEX_TYPES:
        raise StoreError(f"unknown vector index type {kind!r}; known: {', '.join(VECTOR_INDEX_TYPES)}")
    partitions = num_partitions or max(1, min(round(math.sqrt(rows)), rows // _ROWS_PER_PARTITION))
    plan = {"type": kind, "num_partitions": partitions, "trained_rows": rows}
    if kind == "IVF_PQ":
        plan["num_sub_vectors"] = num_sub_vectors or _sub_vectors(dim)
        if dim % plan["num_sub_vectors"]:
            raise StoreError(f"num_sub_vectors must divide the embedding dim {dim}, got {plan['num_sub_vectors']}")
    return plan


def vector_index_config(plan: dict) -> IvfPq | IvfHnswSq:
    """The LanceDB index config of a `vector_index_plan` (L2 distance, as `nearest` searches)."""
    if plan["type"] == "IVF_PQ":
        return IvfPq(distance_type="l2", num_partitions=plan["num_partitions"], num_sub_vectors=plan["num_sub_vectors"])
    return IvfHnswSq(distance_type="l2", num_partitions=plan["num_partitions"])


def _count(table: lancedb.table.Table | None, video_id: str | None) -> int:
    """Rows of a table that may not exist yet (0 then), optionally only those of one video."""
    if table is None:
        return 0
    return table.count_rows(None if video_id is None else sql.equals("video_id", video_id))


def _query(table: lancedb.table.Table | None, where: str | None, columns: Sequence[str] | None,
           limit: int | None) -> pa.Table:
    """Rows of a table that may not exist yet (an empty table then) matching an escaped ``where``."""
    if table is None:
        return pa.table({})
    query = table.search()
    if where:
        query = query.where(where)
    if columns is not None:
        query = query.select(list(columns))
    return query.limit(limit).to_arrow()


def _fragments(table: lancedb.table.Table) -> int:
    """Number of data fragments (files written by separate commits) of a table."""
    return int(table.stats()["fragment_stats"]["num_fragments"])


def _versions(table: lancedb.table.Table) -> set[int]:
    """Version numbers of a table still on disk."""
    return {int(v["version"]) for v in table.list_versions()}


class Store:
    """The project's LanceDB store: `detections`, `tracklets` and `videos` tables at one folder or object-store URI.

    The detections and tracklets tables are created by the first write that has such rows, so a
    store written before tracklets existed opens (read-only too) and simply has no tracklets.
    """

    def __init__(self, db: lancedb.DBConnection, uri: str, videos: lancedb.table.Table,
                 ann: AnnSettings = AnnSettings()) -> None:
        self._db = db
        self.uri = uri
        self.ann = ann
        self._videos = videos
        self._detections: lancedb.table.Table | None = None
        self._tracklets: lancedb.table.Table | None = None
        self._keys_declared: set[str] = set()
        self._shape: tuple[int, int] | None = None
        self._open_detections()

    @classmethod
    def open(cls, uri: str | Path, create: bool = True, read_consistency_s: float = 0.0,
             ann: AnnSettings = AnnSettings()) -> "Store":
        """Open (or create) the store at ``uri``; every failure becomes one clear StoreError line.

        ``read_consistency_s`` is how stale a read may be with respect to other processes' commits
        (0 = always see the latest commit, which is what idempotent skipping across workers needs).
        ``ann`` sets the default recall/latency trade-off of `nearest`.
        """
        uri = str(uri)
        if _is_local(uri):
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
            videos = _open_table(db, VIDEOS, _keyed(videos_schema(), "video_id") if create else None)
        except Exception as exc:  # lancedb surfaces I/O and object-store failures as assorted types
            raise StoreError(f"cannot open store at {uri}: {exc}") from exc
        if videos is None:
            raise StoreError(f"no store at {uri}")
        check_version(videos.schema, VIDEOS, uri)
        return cls(db, uri, videos, ann)

    def _open_detections(self) -> lancedb.table.Table | None:
        """The detections table if it exists yet (it is created by the first write), version-checked."""
        if self._detections is None:
            self._adopt_detections(_open_table(self._db, DETECTIONS))
        return self._detections

    def _adopt_detections(self, table: lancedb.table.Table | None) -> None:
        """Keep ``table`` as the detections table after checking its version and reading its (D, K)."""
        if table is not None:
            check_version(table.schema, DETECTIONS, self.uri)
            self._detections, self._shape = table, embedding_shape(table.schema)

    @property
    def embedding_shape(self) -> tuple[int, int] | None:
        """(D, K) of the stored embeddings, or None before the first detection is written."""
        self._open_detections()
        return self._shape

    def _detections_for_write(self, dim: int, num_parts: int) -> lancedb.table.Table:
        """The detections table, created for (D, K) on first use; refuses a batch of another shape."""
        if self._open_detections() is None:
            self._adopt_detections(_open_table(self._db, DETECTIONS, _keyed(detections_schema(dim, num_parts), "detection_id")))
        if self._shape != (dim, num_parts):
            raise StoreError(
                f"store at {self.uri} holds embeddings with D={self._shape[0]}, K={self._shape[1]}; "
                f"refusing a batch with D={dim}, K={num_parts} (use another store for another model shape)"
            )
        return self._keyed_table(self._detections, "detection_id")

    def _open_tracklets(self) -> lancedb.table.Table | None:
        """The tracklets table if it exists yet (created by the first write with tracklets), version-checked."""
        if self._tracklets is None:
            table = _open_table(self._db, TRACKLETS)
            if table is not None:
                check_version(table.schema, TRACKLETS, self.uri)
            self._tracklets = table
        return self._tracklets

    def _tracklets_for_write(self, dim: int, num_parts: int) -> lancedb.table.Table:
        """The tracklets table, created for (D, K) on first use; refuses tracklets of another shape than the store's."""
        held = self.embedding_shape if self._open_tracklets() is None else embedding_shape(self._tracklets.schema)
        if held not in (None, (dim, num_parts)):
            raise StoreError(
                f"store at {self.uri} holds embeddings with D={held[0]}, K={held[1]}; "
                f"refusing tracklets with D={dim}, K={num_parts}"
            )
        if self._tracklets is None:
            self._tracklets = _open_table(self._db, TRACKLETS, _keyed(tracklets_schema(dim, num_parts), "track_id"))
            check_version(self._tracklets.schema, TRACKLETS, self.uri)
        return self._keyed_table(self._tracklets, "track_id")

    def _tables(self) -> dict[str, lancedb.table.Table]:
        """The store's tables that exist yet, by name (videos always; detections and tracklets once written)."""
        tables = {VIDEOS: self._videos, DETECTIONS: self._open_detections(), TRACKLETS: self._open_tracklets()}
        return {name: table for name, table in tables.items() if table is not None}

    def _keyed_table(self, table: lancedb.table.Table, key: str) -> lancedb.table.Table:
        """``table``, once its ``key`` column is declared its primary key (checked once per Store), for merge_insert."""
        if key not in self._keys_declared:
            _declare_key(table, key)
            self._keys_declared.add(key)
        return table

    def write_video(self, video: dict, detections: pa.Table | Sequence[dict],
                    tracklets: pa.Table | Sequence[dict] | None = None) -> int:
        """Commit one video: its detections, its tracklets, then its "done" row; safe to repeat after a crash.

        Step 1 is one merge_insert keyed on detection_id (matched rows updated, new rows inserted);
        step 2 deletes rows of this video that the batch no longer has (only when there are any,
        e.g. a re-run with other detector settings); steps 3 and 4 do the same for the tracklets
        (keyed on track_id; None or empty means the video has none, so its old ones are removed);
        step 5 upserts the video row as "done". Both batches are checked (and must have the same
        embedding shape, the store's) before anything is written.
        A crash before step 5 leaves the video not done, and re-running rewrites the same ids
        without duplicates. Returns the number of newly inserted detection rows.
        """
        _check_video(video)
        detections = _as_table(detections, _DETECTION_ROWS)
        tracklets = _as_table(tracklets, _TRACKLET_ROWS)
        detections = None if detections is None else _conform(video, detections, _DETECTION_ROWS)
        tracklets = None if tracklets is None else _conform(video, tracklets, _TRACKLET_ROWS)
        target = None
        if tracklets is not None:
            shape = embedding_shape(tracklets.schema)
            own = shape if detections is None else embedding_shape(detections.schema)
            if own != shape:
                raise StoreError(f"video {video['video_id']}: tracklets have D={shape[0]}, K={shape[1]} "
                                 f"but its detections D={own[0]}, K={own[1]}")
            target = self._tracklets_for_write(*shape)
        count = 0 if detections is None else detections.num_rows
        new_rows = self._merge_detections(detections) if count else 0
        self._drop_stale(self._open_detections(), _DETECTION_ROWS, video["video_id"],
                         [] if detections is None else detections["detection_id"].to_pylist())
        if target is not None:
            self._merge(target, _TRACKLET_ROWS, tracklets)
        self._drop_stale(self._open_tracklets(), _TRACKLET_ROWS, video["video_id"],
                         [] if tracklets is None else tracklets["track_id"].to_pylist())
        self._upsert_video(_video_row(video, "done", None, count))
        return new_rows

    def record_failure(self, video: dict, error: str) -> None:
        """Mark a video as failed with its error text, so the run report shows it and a re-run retries it."""
        self._upsert_video(_video_row(video, "failed", str(error), 0))

    def _merge_detections(self, table: pa.Table) -> int:
        """Step 1 of write_video: the single merge_insert commit of one video's conformed detections; rows inserted."""
        return self._merge(self._detections_for_write(*embedding_shape(table.schema)), _DETECTION_ROWS, table)

    @staticmethod
    def _merge(target: lancedb.table.Table, kind: _RowKind, table: pa.Table) -> int:
        """One merge_insert commit of a video's conformed rows into ``target`` keyed on ``kind.key``; returns rows inserted."""
        # A scan join, not the key's index: the indexed join slows down with every fragment
        # written since the last maintain (5 s vs 0.1-0.5 s per video at ~500 new fragments, 250k rows).
        merge = target.merge_insert(kind.key).when_matched_update_all().when_not_matched_insert_all()
        result = merge.use_index(False).execute(table)
        return int(result.num_inserted_rows)

    @staticmethod
    def _drop_stale(target: lancedb.table.Table | None, kind: _RowKind, video_id: str, keep_ids: Sequence[str]) -> None:
        """Steps 2 and 4 of write_video: delete this video's rows of ``target`` whose keys are not in ``keep_ids``.

        (merge_insert's when_not_matched_by_source_delete would do this in step 1's commit, but it
        reads the whole table on every write: ~10x slower at 10k rows, and growing with the table.)
        """
        existing = _query(target, sql.equals("video_id", video_id), [kind.key], None)
        stale = sorted(set(existing[kind.key].to_pylist()) - set(keep_ids)) if existing.num_rows else []
        for start in range(0, len(stale), _ID_BATCH):
            batch = stale[start : start + _ID_BATCH]
            target.delete(sql.all_of([sql.equals("video_id", video_id), sql.is_in(kind.key, batch)]))

    def _upsert_video(self, row: pa.Table) -> None:
        """Step 5 of write_video (and record_failure): insert or replace the video's row."""
        videos = self._keyed_table(self._videos, "video_id")
        videos.merge_insert("video_id").when_matched_update_all().when_not_matched_insert_all().execute(row)

    def create_indexes(self, vector_index_min_rows: int = 10_000) -> list[str]:
        """(Re)build every index now: key/filter columns (BTREE/BITMAP) and, from ``vector_index_min_rows`` rows, the ANN index.

        Without an ANN index LanceDB searches exhaustively (exact), fast enough for small stores;
        with one, `_distance` becomes approximate (the part re-rank stays exact). Rows written
        later are still found (scanned unindexed) until ``optimize`` folds them in. Returns what
        was indexed.
        """
        return sorted(self._ensure_indexes(vector_index_min_rows, rebuild=True))

    def optimize(self) -> None:
        """Compact the small per-video fragments and fold new rows into existing indexes (run between ingest runs)."""
        for table in self._tables().values():
            table.optimize()

    def maintain(self, cleanup_older_than: timedelta | None = timedelta(days=7),
                 vector_index_min_rows: int = 10_000) -> dict:
        """Keep a growing store fast and small: compaction, cleanup of old versions, index upkeep; returns a report.

        Compacts every table's per-video fragments, folds new rows into existing indexes, deletes
        table versions older than ``cleanup_older_than`` (None keeps them all; readers still on an
        older version fail once it is deleted, so use 0 only while nothing else uses the store),
        creates missing scalar indexes and, once the detections table has ``vector_index_min_rows``
        rows, builds the ANN index (retrained when the table has grown 2x since it was trained).
        The report has ``detections``, ``tracklets``, ``videos``, ``fragments_before``/``fragments_after``
        (of the detections table), ``versions_removed`` (all tables), ``indexes``, ``total_bytes`` and ``seconds``.
        """
        started = time.perf_counter()
        keep = _KEEP_ALL_VERSIONS if cleanup_older_than is None else cleanup_older_than
        tables = list(self._tables().values())
        versions_before = [_versions(t) for t in tables]
        fragments_before = _fragments(self._detections) if self._detections is not None else 0
        for table in tables:
            table.optimize(cleanup_older_than=keep)
        indexes = self._ensure_indexes(vector_index_min_rows, rebuild=False)
        if any(entry["action"] != "kept" for entry in indexes.values()):
            for table in tables:  # again: the index builds' commits are versions too
                table.optimize(cleanup_older_than=keep)
        return {
            "detections": self.count_detections(),
            "tracklets": self.count_tracklets(),
            "videos": self.count_videos(),
            "fragments_before": fragments_before,
            "fragments_after": _fragments(self._detections) if self._detections is not None else 0,
            "versions_removed": sum(len(before - _versions(t)) for before, t in zip(versions_before, tables)),
            "indexes": indexes,
            "total_bytes": sum(int(t.stats()["total_bytes"]) for t in tables),
            "seconds": round(time.perf_counter() - started, 3),
        }

    def _ensure_indexes(self, vector_index_min_rows: int, rebuild: bool) -> dict[str, dict]:
        """Create missing scalar indexes (all with ``rebuild``) and the ANN index when due; one report entry per index."""
        actions = {f"{name}.{column}": self._scalar_index(table, column, config, rebuild)
                   for name, table in self._tables().items() for column, config in _SCALAR_INDEXES[name]}
        table = self._open_detections()
        if table is not None:
            rows, plan = table.count_rows(), self.vector_index()
            trained = None if plan is None else plan.get("trained_rows")
            if rows >= vector_index_min_rows and (rebuild or not trained or rows >= _RETRAIN_GROWTH * trained):
                self.build_vector_index((plan or {}).get("type", DEFAULT_VECTOR_INDEX))
                actions["detections.vector"] = "created" if plan is None else "rebuilt"
            elif plan is not None:
                actions["detections.vector"] = "kept"
        return self._index_report(actions)

    @staticmethod
    def _scalar_index(table: lancedb.table.Table, column: str, config: type, rebuild: bool) -> str:
        """Create the scalar index on ``column`` when missing (or always with ``rebuild``); says "created" or "kept"."""
        if not rebuild and any(column in index.columns for index in table.list_indices()):
            return "kept"
        table.create_index(column, config=config(), replace=True)
        return "created"

    def _index_report(self, actions: dict[str, str]) -> dict[str, dict]:
        """Per index (``table.column``): what maintenance did, its type and how many rows it covers or not yet."""
        report = {}
        for name, table in self._tables().items():
            for index in table.list_indices():
                key = f"{name}.{index.columns[0]}"
                stats = table.index_stats(index.name)
                report[key] = {"action": actions.get(key, "kept"), "type": stats.index_type,
                               "indexed_rows": stats.num_indexed_rows, "unindexed_rows": stats.num_unindexed_rows}
        if "detections.vector" in report:
            report["detections.vector"].update(self.vector_index() or {})
        return report

    def build_vector_index(self, kind: str = DEFAULT_VECTOR_INDEX, num_partitions: int | None = None,
                           num_sub_vectors: int | None = None) -> dict:
        """Train and build the ANN index on the global vector now (replacing any); returns its plan (see vector_index_plan)."""
        table = self._open_detections()
        if table is None:
            raise StoreError(f"store at {self.uri} has no detections to index")
        plan = vector_index_plan(table.count_rows(), self._shape[0], kind, num_partitions, num_sub_vectors)
        table.create_index("vector", config=vector_index_config(plan), replace=True)
        table.update_field_metadata({"path": "vector", "metadata": {VECTOR_INDEX_KEY: json.dumps(plan)}})
        return plan

    def vector_index(self) -> dict | None:
        """The plan the current ANN index was built with ({} when built without one), or None when there is no ANN index."""
        table = self._open_detections()
        if table is None or not any(index.columns == ["vector"] for index in table.list_indices()):
            return None
        recorded = (table.schema.field("vector").metadata or {}).get(VECTOR_INDEX_KEY.encode())
        return json.loads(recorded) if recorded else {}

    def model(self) -> dict | None:
        """The model whose embeddings the store holds: {"model_id", "kind" ("kpr" or "global"), "num_parts", "dim"}.

        None before anything was written. Recorded in the videos table's schema, so reading it scans
        nothing; a store written before the record existed answers from its rows (the model of its
        latest done video, a KPR model of the stored shape).
        """
        recorded = (self._videos.schema.field("model_id").metadata or {}).get(STORE_MODEL_KEY.encode())
        if recorded:
            return json.loads(recorded)
        shape, done = self.embedding_shape, self.video_rows("done")
        if shape is None or not done:
            return None
        latest = max(done, key=lambda row: row["ingested_at"] or 0.0)
        return {"model_id": latest["model_id"], "kind": KPR_KIND, "num_parts": shape[1], "dim": shape[0]}

    def set_model(self, model: dict) -> None:
        """Record ``model`` (as `model` returns it) as the model of the store's embeddings."""
        self._videos.update_field_metadata({"path": "model_id", "metadata": {STORE_MODEL_KEY: json.dumps(model)}})

    def replace_model(self, model: dict) -> None:
        """Make ``model`` the store's model: drop every detection and tracklet (the old model's), then record it.

        Video rows stay: they name the old model, so an ingestion with the new one re-embeds them from
        their uri. Search never sees two models' embeddings; a crash part-way leaves the old model
        recorded, so repeating the call finishes the replacement.
        """
        existing = _table_names(self._db)
        for name in (DETECTIONS, TRACKLETS):
            if name in existing:
                self._db.drop_table(name)
        self._detections = self._tracklets = self._shape = None
        self._keys_declared -= {_DETECTION_ROWS.key, _TRACKLET_ROWS.key}
        self.set_model(model)

    def done_video_ids(self, model_id: str) -> set[str]:
        """Ids of all videos fully ingested with ``model_id``."""
        where = sql.all_of([sql.equals("model_id", model_id), sql.equals("status", "done")])
        table = self._videos.search().where(where).select(["video_id"]).limit(None).to_arrow()
        return set(table["video_id"].to_pylist())

    def video_rows(self, status: str | None = None) -> list[dict]:
        """All rows of the videos table (optionally only those with ``status``), as dicts."""
        query = self._videos.search()
        if status is not None:
            query = query.where(sql.equals("status", status))
        return query.limit(None).to_arrow().to_pylist()

    def count_videos(self, status: str | None = None) -> int:
        """Number of video rows, optionally only those with ``status`` ("done" / "failed")."""
        return self._videos.count_rows(None if status is None else sql.equals("status", status))

    def count_detections(self, video_id: str | None = None) -> int:
        """Number of detection rows, optionally of one video."""
        return _count(self._open_detections(), video_id)

    def count_tracklets(self, video_id: str | None = None) -> int:
        """Number of tracklet rows, optionally of one video (0 for a store written before tracklets existed)."""
        return _count(self._open_tracklets(), video_id)

    def query_detections(self, where: str | None, columns: Sequence[str] | None = None, limit: int | None = None) -> pa.Table:
        """Detection rows matching an already-escaped ``where`` clause (build it with storage.sql)."""
        return _query(self._open_detections(), where, columns, limit)

    def list_tracklets(self, where: str | None = None, limit: int | None = None,
                       columns: Sequence[str] | None = None) -> pa.Table:
        """Tracklet rows (all columns, aggregated embeddings included, unless ``columns``) matching an escaped ``where``."""
        return _query(self._open_tracklets(), where, columns, limit)

    def iter_detections(self, columns: Sequence[str] | None = None, batch_rows: int = 16_384) -> Iterator[pa.Table]:
        """Every detection row in batches of at most ``batch_rows``, so whole-table passes need not hold the table."""
        table = self._open_detections()
        if table is None:
            return
        query = table.search() if columns is None else table.search().select(list(columns))
        for batch in query.limit(None).to_batches(batch_rows):
            yield pa.Table.from_batches([batch])

    def get_detection(self, detection_id: str, columns: Sequence[str] | None = None) -> dict:
        """One detection row (all columns unless ``columns``) as a dict; NotFoundError for an unknown id."""
        if sql.storable(detection_id):
            rows = self.query_detections(sql.equals("detection_id", detection_id), columns, limit=1).to_pylist()
            if rows:
                return rows[0]
        raise NotFoundError(f"unknown detection id {detection_id!r}")

    def detections_by_ids(self, ids: Iterable[str], columns: Sequence[str] | None = None) -> pa.Table:
        """Detection rows for ``ids`` in the given order (unknown ids skipped, repeats collapsed)."""
        wanted = list(dict.fromkeys(ids))
        if columns is not None and "detection_id" not in columns:
            columns = [*columns, "detection_id"]
        batches = [wanted[i : i + _ID_BATCH] for i in range(0, len(wanted), _ID_BATCH)] or [[]]
        table = pa.concat_tables([self.query_detections(sql.is_in("detection_id", b), columns) for b in batches])
        if not table.num_rows:
            return table
        position = {det_id: i for i, det_id in enumerate(table["detection_id"].to_pylist())}
        return table.take([position[i] for i in wanted if i in position])

    def list_detections(self, where: str | None, limit: int, offset: int = 0,
                        columns: Sequence[str] = LIST_COLUMNS) -> pa.Table:
        """One page of detection rows (metadata only by default) matching an escaped ``where``, in storage order."""
        if limit < 0 or offset < 0:
            raise StoreError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
        table = self._open_detections()
        if table is None:
            return pa.table({})
        query = table.search().select(list(columns)).offset(offset).limit(limit)
        return (query.where(where) if where else query).to_arrow()

    def tracklet_detections(self, track_id: str) -> pa.Table:
        """All detections (every column, embeddings included) of one tracklet, in frame order."""
        rows = self.query_detections(sql.equals("track_id", track_id))
        return rows.sort_by([("video_id", "ascending"), ("frame_index", "ascending")]) if rows.num_rows else rows

    def cameras(self) -> list[str]:
        """Ids of the cameras that have detections (from the small videos table), sorted."""
        where = sql.all_of([sql.equals("status", "done"), "n_detections > 0"])
        table = self._videos.search().where(where).select(["camera_id"]).limit(None).to_arrow()
        return sorted(set(table["camera_id"].to_pylist()))

    def time_range(self) -> tuple[float, float] | None:
        """(earliest, latest) detection timestamp in epoch seconds, or None while there is no detection."""
        table = self._open_detections()
        if table is None:
            return None
        ends = []
        for ascending in (True, False):  # a top-1 per end: 10-30 ms at 1M rows, vs 250-500 ms for reading the column
            first = table.search().select(["timestamp"]).order_by([ColumnOrdering(column_name="timestamp", ascending=ascending)])
            ends.append(first.limit(1).to_arrow()["timestamp"].to_pylist())
        return (float(ends[0][0]), float(ends[1][0])) if ends[0] else None

    def nearest(self, vector: np.ndarray, where: str | None, limit: int, columns: Sequence[str],
                nprobes: int | None = None, refine_factor: int | None = None,
                max_nprobes: int | None = None) -> pa.Table:
        """ANN top-``limit`` detections by L2 on the global vector, prefiltered by ``where``; adds ``_distance``.

        ``_distance`` is LanceDB's squared L2 distance (exact without an ANN index or under a
        selective filter; with the index, exact after refinement, else approximate).
        ``nprobes``/``refine_factor``/``max_nprobes`` default to ``self.ann`` (refine_factor 0: no refinement).
        """
        table = self._open_detections()
        if table is None:
            return pa.table({})
        nprobes = self.ann.nprobes if nprobes is None else nprobes
        refine_factor = self.ann.refine_factor if refine_factor is None else refine_factor
        max_nprobes = max(nprobes, self.ann.max_nprobes if max_nprobes is None else max_nprobes)
        query = table.search(np.asarray(vector, np.float32), vector_column_name="vector").distance_type("l2")
        if where:
            query = query.where(where, prefilter=True)
        if where and table.count_rows(where) <= self.ann.flat_max_rows:
            query = query.bypass_vector_index()
        else:
            query = query.minimum_nprobes(nprobes).maximum_nprobes(max_nprobes)
            query = query.refine_factor(refine_factor) if refine_factor else query
        return query.select([*columns, "_distance"]).limit(limit).to_arrow()
