"""LanceDB-backed store of detections and video ingestion status, written once per video, idempotently."""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import lancedb
from lancedb.index import Bitmap, BTree, IvfPq
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import sql
from storage.schema import (
    DETECTIONS,
    VIDEOS,
    StoreError,
    check_version,
    detections_schema,
    detections_table,
    embedding_shape,
    embeddings_of,
    videos_schema,
)

_REQUIRED_VIDEO_KEYS = ("video_id", "uri", "camera_id", "model_id")
_ID_BATCH = 1000
_OPEN_ATTEMPTS = 8


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


def _open_table(db: lancedb.DBConnection, name: str, schema: pa.Schema | None = None) -> lancedb.table.Table | None:
    """Open table ``name``, or create it with ``schema`` when missing (None when missing and no schema).

    Another process may be creating the same table at this moment: its folder is then listed
    before its first commit can be opened, so a failed open/create is retried briefly.
    """
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            if name in _table_names(db):
                return db.open_table(name)
            return None if schema is None else db.create_table(name, schema=schema, exist_ok=True)
        except (ValueError, OSError, RuntimeError):
            if attempt == _OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    return None


def _is_local(uri: str) -> bool:
    """Whether ``uri`` names a local folder (a plain path or file://) rather than an object store."""
    return "://" not in uri or uri.startswith("file://")


def _rows_to_table(rows: Sequence[dict]) -> pa.Table:
    """Detections given as dicts (metadata + vector, parts, visibility) as a detections Arrow table."""
    try:
        embeddings = embeddings_of(rows)
    except (KeyError, ValueError) as exc:
        raise StoreError(f"detection dicts need vector [D], parts [K, D] and visibility [K]: {exc!r}") from exc
    return detections_table(rows, embeddings)


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


class Store:
    """The project's LanceDB store: a `detections` and a `videos` table at one folder or object-store URI."""

    def __init__(self, db: lancedb.DBConnection, uri: str, videos: lancedb.table.Table) -> None:
        self._db = db
        self.uri = uri
        self._videos = videos
        self._detections: lancedb.table.Table | None = None
        self._shape: tuple[int, int] | None = None
        self._open_detections()

    @classmethod
    def open(cls, uri: str | Path, create: bool = True, read_consistency_s: float = 0.0) -> "Store":
        """Open (or create) the store at ``uri``; every failure becomes one clear StoreError line.

        ``read_consistency_s`` is how stale a read may be with respect to other processes' commits
        (0 = always see the latest commit, which is what idempotent skipping across workers needs).
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
            videos = _open_table(db, VIDEOS, videos_schema() if create else None)
        except Exception as exc:  # lancedb surfaces I/O and object-store failures as assorted types
            raise StoreError(f"cannot open store at {uri}: {exc}") from exc
        if videos is None:
            raise StoreError(f"no store at {uri}")
        check_version(videos.schema, VIDEOS, uri)
        return cls(db, uri, videos)

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
            self._adopt_detections(_open_table(self._db, DETECTIONS, detections_schema(dim, num_parts)))
        if self._shape != (dim, num_parts):
            raise StoreError(
                f"store at {self.uri} holds embeddings with D={self._shape[0]}, K={self._shape[1]}; "
                f"refusing a batch with D={dim}, K={num_parts} (use another store for another model shape)"
            )
        return self._detections

    def write_video(self, video: dict, detections: pa.Table | Sequence[dict]) -> int:
        """Commit one video: its detections, then its "done" row; safe to repeat after a crash.

        Step 1 is one merge_insert keyed on detection_id (matched rows updated, new rows inserted);
        step 2 deletes rows of this video that the batch no longer has (only when there are any,
        e.g. a re-run with other detector settings); step 3 upserts the video row as "done". A crash
        before step 3 leaves the video not done, and re-running rewrites the same ids without
        duplicates. Returns the number of newly inserted detection rows.
        """
        _check_video(video)
        if not isinstance(detections, pa.Table):
            detections = _rows_to_table(detections) if detections else None
        count = 0 if detections is None else detections.num_rows
        new_rows = self._merge_detections(video, detections) if count else 0
        self._drop_stale_detections(video["video_id"], [] if detections is None else detections["detection_id"].to_pylist())
        self._upsert_video(_video_row(video, "done", None, count))
        return new_rows

    def record_failure(self, video: dict, error: str) -> None:
        """Mark a video as failed with its error text, so the run report shows it and a re-run retries it."""
        self._upsert_video(_video_row(video, "failed", str(error), 0))

    def _merge_detections(self, video: dict, table: pa.Table) -> int:
        """Step 1 of write_video: the single merge_insert commit of one video's detections."""
        video_id = video.get("video_id")
        try:
            dim = table.schema.field("vector").type.list_size
            num_parts = table.schema.field("visibility").type.list_size
            schema = detections_schema(dim, num_parts)
            table = table.select(schema.names).cast(schema)
        except (AttributeError, KeyError, ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise StoreError(f"video {video_id}: detections do not fit the store schema: {exc}") from exc
        for field in schema:
            if not field.nullable and table.column(field.name).null_count:
                raise StoreError(f"video {video_id}: column {field.name} has nulls")
        if not pc.all(pc.equal(table["video_id"], video_id)).as_py():
            raise StoreError(f"video {video_id}: detections carry another video_id")
        if not pc.all(pc.equal(table["model_id"], video.get("model_id"))).as_py():
            raise StoreError(f"video {video_id}: detections carry another model_id than the video row")
        if pc.count_distinct(table["detection_id"]).as_py() != table.num_rows:
            raise StoreError(f"video {video_id}: duplicate detection_id in the batch")
        result = (
            self._detections_for_write(dim, num_parts)
            .merge_insert("detection_id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(table)
        )
        return int(result.num_inserted_rows)

    def _drop_stale_detections(self, video_id: str, keep_ids: Sequence[str]) -> None:
        """Step 2 of write_video: delete this video's rows whose ids are not in ``keep_ids``.

        (merge_insert's when_not_matched_by_source_delete would do this in step 1's commit, but it
        reads the whole table on every write: ~10x slower at 10k rows, and growing with the table.)
        """
        existing = self.query_detections(sql.equals("video_id", video_id), columns=["detection_id"])
        if not existing.num_rows:
            return
        stale = sorted(set(existing["detection_id"].to_pylist()) - set(keep_ids))
        for start in range(0, len(stale), _ID_BATCH):
            batch = stale[start : start + _ID_BATCH]
            self._detections.delete(sql.all_of([sql.equals("video_id", video_id), sql.is_in("detection_id", batch)]))

    def _upsert_video(self, row: pa.Table) -> None:
        """Step 3 of write_video (and record_failure): insert or replace the video's row."""
        self._videos.merge_insert("video_id").when_matched_update_all().when_not_matched_insert_all().execute(row)

    def create_indexes(self, vector_index_min_rows: int = 10_000) -> list[str]:
        """Index key/filter columns (BTREE/BITMAP) and, from ``vector_index_min_rows`` rows, the vector (IVF_PQ).

        Without an ANN index LanceDB searches exhaustively (exact), fast enough for small stores;
        with one, `_distance` becomes PQ-approximate (the part re-rank stays exact). Rows written
        later are still found (scanned unindexed) until ``optimize`` folds them in. Returns what
        was indexed.
        """
        self._videos.create_index("video_id", config=BTree(), replace=True)
        done = ["videos.video_id"]
        table = self._open_detections()
        if table is None:
            return done
        for column, config in (("detection_id", BTree()), ("video_id", BTree()), ("timestamp", BTree()), ("camera_id", Bitmap())):
            table.create_index(column, config=config, replace=True)
            done.append(f"detections.{column}")
        if table.count_rows() >= vector_index_min_rows:
            table.create_index("vector", config=IvfPq(distance_type="l2"), replace=True)
            done.append("detections.vector")
        return done

    def optimize(self) -> None:
        """Compact the small per-video fragments and fold new rows into existing indexes (run between ingest runs)."""
        self._videos.optimize()
        if self._open_detections() is not None:
            self._detections.optimize()

    def is_done(self, video_id: str, model_id: str) -> bool:
        """Whether ``video_id`` was fully ingested with ``model_id`` (so ingestion may skip it)."""
        where = sql.all_of([sql.equals("video_id", video_id), sql.equals("model_id", model_id), sql.equals("status", "done")])
        return self._videos.count_rows(where) > 0

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
        table = self._open_detections()
        if table is None:
            return 0
        return table.count_rows(None if video_id is None else sql.equals("video_id", video_id))

    def query_detections(self, where: str | None, columns: Sequence[str] | None = None, limit: int | None = None) -> pa.Table:
        """Detection rows matching an already-escaped ``where`` clause (build it with storage.sql)."""
        table = self._open_detections()
        if table is None:
            return pa.table({})
        query = table.search()
        if where:
            query = query.where(where)
        if columns is not None:
            query = query.select(list(columns))
        return query.limit(limit).to_arrow()

    def get_detection(self, detection_id: str) -> dict | None:
        """One detection row as a dict, or None when the id is unknown."""
        rows = self.query_detections(sql.equals("detection_id", detection_id), limit=1).to_pylist()
        return rows[0] if rows else None

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

    def nearest(self, vector: np.ndarray, where: str | None, limit: int, columns: Sequence[str]) -> pa.Table:
        """ANN top-``limit`` detections by L2 on the global vector, prefiltered by ``where``; adds ``_distance``.

        ``_distance`` is LanceDB's squared L2 distance (exact without an ANN index, PQ-approximate with one).
        """
        table = self._open_detections()
        if table is None:
            return pa.table({})
        query = table.search(np.asarray(vector, np.float32), vector_column_name="vector").distance_type("l2")
        if where:
            query = query.where(where, prefilter=True)
        return query.select([*columns, "_distance"]).limit(limit).to_arrow()
