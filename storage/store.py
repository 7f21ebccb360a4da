"""The project's LanceDB store: detections, tracklets and per-video status, with the reads search needs.

`Store` is the one door to a store; the work behind it lives by job: storage.tables (opening and
creating tables), storage.writer (the exactly-once commit protocol), storage.indexes (index upkeep
and maintenance).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lancedb
from lancedb.query import ColumnOrdering
import numpy as np
import pyarrow as pa

from storage import indexes, sql
from storage.indexes import DEFAULT_VECTOR_INDEX, DEFAULT_VECTOR_INDEX_MIN_ROWS
from storage.schema import KPR_KIND, NotFoundError, RowsMovedError, StoreError, global_vectors, schema_version
from storage.tables import StoreTables
from storage.writer import DEFAULT_LEASE_S, VideoRows, VideoWriter

_ID_BATCH = 1000
# Field metadata of the videos table's `model_id` column that records the store's model (see Store.model).
STORE_MODEL_KEY = "kpr:store_model"
# Field metadata of the videos table's `camera_id` column: the cameras file that the latest ingestion with one read.
STORE_CAMERAS_KEY = "kpr:cameras_file"
# The ANN defaults, chosen by bench/search_bench.py at 1M rows, D=128 (see bench/README.md).
DEFAULT_NPROBES = 10
DEFAULT_MAX_NPROBES = 60
# No refinement: re-scoring 2 x the candidates with the exact vector cost 14 ms per search at 1M rows, and
# PersonSearch's exact part re-rank of more PQ candidates reaches the recall it bought (storage.search).
DEFAULT_REFINE_FACTOR = None
DEFAULT_FLAT_MAX_ROWS = 50_000
DEFAULT_POSTFILTER_MIN_SHARE = 0.9
# Rows per batch of a filter's exact scan: LanceDB's own batch size. One batch of all the rows (15k at 1M) makes it
# join its batches first: the same median search, a longer tail (p95 55 vs 51 ms, interleaved at 1M rows).
_SCAN_BATCH_ROWS = 8192
# A filter applied after the vector search is applied to this many times the candidates asked for.
_POSTFILTER_FETCH = 2
LIST_COLUMNS = ("detection_id", "video_id", "camera_id", "frame_index", "timestamp", "track_id", "bbox",
                "det_score", "thumbnail")


@dataclass(frozen=True)
class AnnSettings:
    """How the ANN stage trades latency for recall; ignored while the table has no vector index.

    ``nprobes``: IVF partitions always searched; ``max_nprobes``: partitions searched at most, as LanceDB
    probes on while farther partitions may still hold nearer rows or a filter leaves fewer than
    ``limit`` rows in the first ones (at 1M rows, unfiltered recall@50 0.83 / 0.92 / 0.97 / 0.986 /
    0.986 with a bound of 10 / 20 / 40 / 60 / 200, 60 costing 10 ms less CPU per query than 200);
    ``refine_factor``: how many times ``limit`` PQ candidates are re-scored with the exact global vector (None: no refinement);
    ``flat_max_rows``: a filter that keeps at most this many rows is answered by an exact scan of
    them instead (probing stops at the first partitions holding enough filtered rows, which
    misses many of a selective filter's true neighbours; the scan costs 22-37 ms for 6k-60k rows at 1M);
    ``postfilter_min_share``: a filter that keeps at least this share of the rows (a detection query
    excluding its own camera) is applied to the nearest candidates only, as prefiltering evaluates
    it on every row (280 vs 70 ms per detection query at 1M rows; 1.0: always prefilter).
    """

    nprobes: int = DEFAULT_NPROBES
    max_nprobes: int = DEFAULT_MAX_NPROBES
    refine_factor: int | None = DEFAULT_REFINE_FACTOR
    flat_max_rows: int = DEFAULT_FLAT_MAX_ROWS
    postfilter_min_share: float = DEFAULT_POSTFILTER_MIN_SHARE


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


class _VideoSpans:
    """Each camera's done videos as arrays of start, end and detection count, read again only when the videos
    table has a newer version than the one they were read at."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.cameras: dict[str, np.ndarray] = {}  # camera id -> [n, 3]: start, end, detections of its done videos

    def at_most(self, videos: lancedb.table.Table, cameras: Sequence[str] | None, t_min: float | None,
                t_max: float | None) -> int | None:
        """The detections of the done videos of ``cameras`` (None: all) whose span meets [t_min, t_max]; None when
        one of those videos has no known span."""
        self._refresh(videos)
        chosen = [self.cameras[c] for c in (self.cameras if cameras is None else cameras) if c in self.cameras]
        spans = np.concatenate(chosen) if chosen else np.empty((0, 3))
        met = np.ones(len(spans), bool)
        if t_min is not None:
            met &= ~(spans[:, 1] < t_min)
        if t_max is not None:
            met &= ~(spans[:, 0] > t_max)
        return None if np.isnan(spans[met, :2]).any() else int(spans[met, 2].sum())

    def seen(self, videos: lancedb.table.Table) -> list[str]:
        """Ids of the cameras whose done videos hold detections, sorted."""
        self._refresh(videos)
        return sorted(camera for camera, spans in self.cameras.items() if spans[:, 2].sum() > 0)

    def _refresh(self, videos: lancedb.table.Table) -> None:
        """Read the videos table again if it changed since."""
        version = videos.version
        if version == self.version:
            return
        rows = videos.search().where(sql.equals("status", "done")).select(
            ["camera_id", "start_time", "duration", "n_detections"]).limit(None).to_arrow()
        starts = rows["start_time"].to_numpy(zero_copy_only=False).astype(np.float64)
        ends = starts + rows["duration"].to_numpy(zero_copy_only=False).astype(np.float64)
        spans = np.stack([starts, ends, rows["n_detections"].fill_null(0).to_numpy().astype(np.float64)], axis=1)
        camera_ids = np.asarray(rows["camera_id"].to_pylist(), object)
        self.cameras = {str(c): spans[camera_ids == c] for c in dict.fromkeys(camera_ids)}
        self.version = version


class Store:
    """The project's LanceDB store: `detections`, `tracklets` and `videos` tables at one folder or object-store URI.

    The detections and tracklets tables are created by the first write that has such rows, so a
    store written before tracklets existed opens (read-only too) and simply has no tracklets.
    """

    def __init__(self, tables: StoreTables, ann: AnnSettings = AnnSettings(), lease_s: float = DEFAULT_LEASE_S) -> None:
        self._tables = tables
        self.uri = tables.uri
        self.ann = ann
        self._videos = tables.videos
        self._spans = _VideoSpans()
        self._writer = VideoWriter(tables, lease_s)

    @classmethod
    def open(cls, uri: str | Path, create: bool = True, read_consistency_s: float = 0.0,
             ann: AnnSettings = AnnSettings(), lease_s: float = DEFAULT_LEASE_S) -> "Store":
        """Open (or create) the store at ``uri``; every failure becomes one clear StoreError line.

        ``read_consistency_s`` is how stale a read may be with respect to other processes' commits
        (0 = always see the latest commit, which is what idempotent skipping across workers needs).
        ``ann`` sets the default recall/latency trade-off of `nearest`; ``lease_s`` is how long a
        claim of a writer on another host counts as live (see storage.writer).
        """
        return cls(StoreTables.open(str(uri), create, read_consistency_s), ann, lease_s)

    def _open_detections(self) -> lancedb.table.Table | None:
        """The detections table if it exists yet (it is created by the first write)."""
        return self._tables.detections()

    def _open_tracklets(self) -> lancedb.table.Table | None:
        """The tracklets table if it exists yet (created by the first write with tracklets)."""
        return self._tables.tracklets()

    @property
    def embedding_shape(self) -> tuple[int, int] | None:
        """(D, K) of the stored embeddings, or None before the first detection is written."""
        return self._tables.shape

    @property
    def embedding_columns(self) -> tuple[str, ...]:
        """The detection columns that `embeddings_of` needs in this store's encoding (a version-3 store's parts hold
        the visibility), for reads that want the embeddings and nothing more; empty before the first detection."""
        return self._tables.embedding_columns

    def write_video(self, video: dict, detections: pa.Table | Sequence[dict],
                    tracklets: pa.Table | Sequence[dict] | None = None) -> int:
        """Commit one video (detections, tracklets, then its "done" row), exactly once whatever crashes or races.

        See storage.writer for the protocol; returns the detection rows added (less any an earlier
        attempt of the video had left).
        """
        return self._writer.write([VideoRows(video, detections, tracklets)])

    def write_videos(self, batch: Sequence[VideoRows]) -> int:
        """Commit several videos with one commit per step for all of them (cheaper than one write_video each)."""
        return self._writer.write(batch)

    def record_failure(self, video: dict, error: str) -> None:
        """Mark a video as failed with its error text, so the run report shows it and a re-run retries it."""
        self._writer.record_failure(video, error)

    def create_indexes(self, vector_index_min_rows: int = DEFAULT_VECTOR_INDEX_MIN_ROWS) -> list[str]:
        """(Re)build every index now: key/filter columns (BTREE/BITMAP) and, from ``vector_index_min_rows`` rows, the ANN index.

        Without an ANN index LanceDB searches exhaustively (exact), fast enough for small stores;
        with one, `_distance` becomes approximate (the part re-rank stays exact). Rows written
        later are still found (scanned unindexed) until ``optimize`` folds them in. Returns what
        was indexed.
        """
        return sorted(indexes.ensure_indexes(self._tables, vector_index_min_rows, rebuild=True))

    def optimize(self) -> None:
        """Compact the small per-commit fragments and fold new rows into existing indexes (run between ingest runs)."""
        for table in self._tables.all().values():
            table.optimize()

    def maintain(self, cleanup_older_than: timedelta | None = timedelta(days=7),
                 vector_index_min_rows: int = DEFAULT_VECTOR_INDEX_MIN_ROWS) -> dict:
        """Keep a growing store fast and small: compaction, cleanup of old versions, index upkeep; returns a report.

        Compacts every table's per-commit fragments, folds new rows into existing indexes, deletes
        table versions older than ``cleanup_older_than`` (None keeps them all; readers still on an
        older version fail once it is deleted, so use 0 only while nothing else uses the store),
        creates missing scalar indexes and, once the detections table has ``vector_index_min_rows``
        rows, builds the ANN index (retrained when the table has grown 2x since it was trained).
        The report has ``detections``, ``tracklets``, ``videos``, ``fragments_before``/``fragments_after``
        (of the detections table), ``versions_removed`` (all tables), ``indexes``, ``total_bytes`` and ``seconds``.
        """
        return indexes.maintain(self._tables, cleanup_older_than, vector_index_min_rows)

    def table_stats(self) -> dict[str, dict]:
        """Per table that exists yet: rows, current version, versions kept, data fragments, bytes of the current
        version and the schema version it was written with."""
        stats = {}
        for name, table in self._tables.all().items():
            lance = table.stats()
            stats[name] = {"rows": int(lance["num_rows"]), "version": int(table.version),
                           "versions": len(table.list_versions()),
                           "fragments": int(lance["fragment_stats"]["num_fragments"]),
                           "bytes": int(lance["total_bytes"]), "schema_version": schema_version(table.schema)}
        return stats

    def index_stats(self) -> dict[str, dict]:
        """Per index (``table.column``): its type and its indexed and not yet indexed rows (see indexes.index_stats)."""
        return indexes.index_stats(self._tables)

    def fragments(self) -> int:
        """Data fragments of the detections table (one per commit since the last compaction; 0 before any)."""
        table = self._open_detections()
        return 0 if table is None else indexes.fragments(table)

    def build_vector_index(self, kind: str = DEFAULT_VECTOR_INDEX, num_partitions: int | None = None,
                           num_sub_vectors: int | None = None) -> dict:
        """Train and build the ANN index on the global vector now (replacing any); returns its plan (see vector_index_plan)."""
        return indexes.build_vector_index(self._tables, kind, num_partitions, num_sub_vectors)

    def vector_index(self) -> dict | None:
        """The plan the current ANN index was built with ({} when built without one), or None when there is no ANN index."""
        return indexes.vector_index(self._tables)

    def model(self) -> dict | None:
        """The model whose embeddings the store holds: {"model_id", "kind" ("kpr" or "global"), "num_parts", "dim"}.

        None before anything was written. Recorded in the videos table's schema, so reading it scans
        nothing; a store written before the record existed answers from its rows (the model of its
        latest done video, a KPR model of the stored shape).
        """
        recorded = (self._videos.schema.field("model_id").metadata or {}).get(STORE_MODEL_KEY.encode())
        if recorded:
            return json.loads(recorded)
        shape = self.embedding_shape
        if shape is None:
            return None
        # Two columns of the done rows, not whole rows: every search asks (36 of 155 ms per query at 4,000 videos).
        done = self._videos.search().where(sql.equals("status", "done")).select(["model_id", "ingested_at"])
        done = done.limit(None).to_arrow().to_pylist()
        if not done:
            return None
        latest = max(done, key=lambda row: row["ingested_at"] or 0.0)
        return {"model_id": latest["model_id"], "kind": KPR_KIND, "num_parts": shape[1], "dim": shape[0]}

    def set_model(self, model: dict) -> None:
        """Record ``model`` (as `model` returns it) as the model of the store's embeddings."""
        self._videos.update_field_metadata({"path": "model_id", "metadata": {STORE_MODEL_KEY: json.dumps(model)}})

    def cameras_file(self) -> tuple[str, str] | None:
        """(path, text) of the cameras file that the latest ingestion with one read, None if none did: the views
        (kpr serve, kpr journey) use it when they are given no cameras file of their own."""
        recorded = (self._videos.schema.field("camera_id").metadata or {}).get(STORE_CAMERAS_KEY.encode())
        if not recorded:
            return None
        record = json.loads(recorded)
        return record["path"], record["text"]

    def record_cameras_file(self, path: str, text: str) -> None:
        """Remember the cameras file ``path`` with its ``text`` (replacing the one remembered before)."""
        record = json.dumps({"path": path, "text": text})
        self._videos.update_field_metadata({"path": "camera_id", "metadata": {STORE_CAMERAS_KEY: record}})

    def replace_model(self, model: dict) -> None:
        """Make ``model`` the store's model: drop every detection and tracklet (the old model's), then record it.

        Video rows stay: they name the old model, so an ingestion with the new one re-embeds them from
        their uri. Search never sees two models' embeddings; a crash part-way leaves the old model
        recorded, so repeating the call finishes the replacement.
        """
        self._tables.drop_embedded()
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

    def detections_at_most(self, cameras: Sequence[str] | None, t_min: float | None, t_max: float | None) -> int | None:
        """At most how many detections lie in ``cameras`` (None: all) between ``t_min`` and ``t_max``, from the videos
        table alone: the detections of the done videos of those cameras whose span meets the window. None when one
        of those videos has no known span. Lets a search skip counting a filter's rows (6 ms at 1M rows)."""
        return self._spans.at_most(self._videos, cameras, t_min, t_max)

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
        """Ids of the cameras that have detections, sorted: from the small videos table, read again only when it
        changed (a search checks its cameras against them: 10 ms per read at 4,000 videos)."""
        return self._spans.seen(self._videos)

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
                max_nprobes: int | None = None, flat_limit: int | None = None,
                kept_at_most: int | None = None) -> pa.Table:
        """ANN top-``limit`` detections by L2 on the global vector, prefiltered by ``where``, nearest first.

        Returns ``columns`` plus ``_distance`` (LanceDB's squared L2 distance: exact without an ANN
        index or under a selective filter; with the index, exact after refinement, else
        approximate) and ``_rowid`` (for `detections_at`). A filter that keeps at
        most ``self.ann.flat_max_rows`` rows is scanned and ranked exactly, returning the top-``flat_limit``
        (default ``limit``) instead: such a scan is cheap, and the few rows it ranks need a larger
        re-rank pool. A filter that keeps at least ``self.ann.postfilter_min_share`` of the rows
        (e.g. a detection query excluding its own camera) is applied to the nearest
        ``_POSTFILTER_FETCH`` x ``limit`` instead of to every row. ``nprobes``/``refine_factor``/
        ``max_nprobes`` default to ``self.ann`` (refine_factor 0: no refinement). An ANN search finds the neighbours first
        and reads their ``columns`` afterwards. ``kept_at_most``: a bound the caller knows on the rows ``where``
        keeps (see `detections_at_most`); within ``flat_max_rows`` the rows are scanned without counting them first.
        """
        table = self._open_detections()
        if table is None:
            return pa.table({})
        nprobes = self.ann.nprobes if nprobes is None else nprobes
        refine_factor = self.ann.refine_factor if refine_factor is None else refine_factor
        query = table.search(np.asarray(vector, np.float32), vector_column_name="vector").distance_type("l2")
        kept = None
        if where:
            bounded = kept_at_most is not None and kept_at_most <= self.ann.flat_max_rows
            kept = None if bounded else table.count_rows(where)
            if kept is None or kept <= self.ann.flat_max_rows:
                scanned = self._scanned_nearest(table, vector, where, max(limit, flat_limit or 0), columns)
                if scanned is not None:  # None: more rows than the bound or count said (videos written since)
                    return scanned
                kept = table.count_rows(where)
        fetch = limit
        if kept is not None:
            broad = kept >= self.ann.postfilter_min_share * table.count_rows()
            fetch = limit * _POSTFILTER_FETCH if broad else limit
            query = query.where(where, prefilter=not broad)
        max_nprobes = max(nprobes, self.ann.max_nprobes if max_nprobes is None else max_nprobes)
        query = query.minimum_nprobes(nprobes).maximum_nprobes(max_nprobes)
        query = query.refine_factor(refine_factor) if refine_factor else query
        # Only row ids: reading even the detection ids of 700 neighbours took a quarter of a search at 1M rows.
        found = query.select(["_distance"]).with_row_id(True).limit(fetch).to_arrow().slice(0, limit)
        rows = self.detections_at(found, columns)
        return pa.Table.from_arrays([*rows.columns, *found.columns], names=[*rows.column_names, *found.column_names])

    def _scanned_nearest(self, table: lancedb.table.Table, vector: np.ndarray, where: str, limit: int,
                         columns: Sequence[str]) -> pa.Table | None:
        """The exact top-``limit`` by squared L2 of the few rows ``where`` keeps, as `nearest` returns them (None
        when it keeps more than ``self.ann.flat_max_rows``).

        One scan reads them with their ``columns``, ranked here: LanceDB's exact vector search over
        them reads its top rows again by row id afterwards, which took twice as long for a 4,000-row
        re-rank pool of a 15k-row filter at 1M rows.
        """
        names = list(dict.fromkeys([*columns, "vector"]))
        rows = table.search().where(where).select(names).with_row_id(True).limit(self.ann.flat_max_rows + 1)
        rows = rows.to_batches(batch_size=_SCAN_BATCH_ROWS).read_all()
        if rows.num_rows > self.ann.flat_max_rows:
            return None
        batches = rows.to_batches()  # the scan's batches, kept apart: joining them would copy every kept row
        query = np.asarray(vector, np.float32)
        squared = np.concatenate([_squared_distances(global_vectors(pa.Table.from_batches([b])), query) for b in batches]
                                 or [np.empty(0, np.float32)])
        nearest = np.argpartition(squared, limit)[:limit] if len(squared) > limit else np.arange(len(squared))
        nearest = nearest[np.lexsort((rows["_rowid"].to_numpy()[nearest], squared[nearest]))]  # LanceDB's order
        found = _rows_at(batches, rows.schema, nearest).select([*dict.fromkeys(columns), "_rowid"])
        return found.add_column(found.num_columns - 1, "_distance", pa.array(squared[nearest], pa.float32()))

    def detections_at(self, found: pa.Table, columns: Sequence[str]) -> pa.Table:
        """``columns`` of the detections at ``found``'s ``_rowid``s, in its order (a take: 2-3 ms for 50 rows at 1M).

        LanceDB never gives a row id to another row of a table (compaction writes new fragments with new ids, and a
        deleted row's id reads nothing), so every row read is the row that was found. RowsMovedError when some were
        deleted or moved by maintenance since they were found: search again.
        """
        table = self._open_detections()
        if table is None or not found.num_rows:
            return pa.table({}) if table is None else table.schema.empty_table().select(list(columns))
        row_ids = found["_rowid"].to_pylist()
        taken = table.take_row_ids(row_ids).select(list(dict.fromkeys(columns))).with_row_id().to_arrow()
        position = {row_id: i for i, row_id in enumerate(taken["_rowid"].to_pylist())}
        order = [position.get(row_id) for row_id in row_ids]
        if None in order:
            raise RowsMovedError(f"{order.count(None)} of {len(order)} detections were deleted or moved by maintenance "
                                 "while they were being searched; search again")
        return taken.take(order).select(list(columns))


def _squared_distances(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Squared L2 distance [N] of each row of ``vectors`` [N, D] to ``query`` [D]."""
    offsets = vectors - query
    return np.einsum("ij,ij->i", offsets, offsets)


def _rows_at(batches: Sequence[pa.RecordBatch], schema: pa.Schema, positions: np.ndarray) -> pa.Table:
    """The rows at ``positions`` (into the batches laid end to end), in that order, as one chunk.

    Copies only those rows: ``Table.take`` on a table of several chunks first joins them all, a copy of every row
    of a filter's scan to keep 4,000 (ranking, taking and decoding a 15k-row filter at 1M rows: 12.8 vs 15.0 ms).
    """
    starts = np.cumsum([0, *(batch.num_rows for batch in batches)])
    chunk = np.searchsorted(starts, positions, side="right") - 1
    order = np.argsort(chunk, kind="stable")
    pieces = [batches[c].take(pa.array(positions[order][chunk[order] == c] - starts[c])) for c in np.unique(chunk)]
    grouped = pa.Table.from_batches(pieces, schema=schema).combine_chunks()
    return grouped.take(pa.array(np.argsort(order)))
