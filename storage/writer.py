"""The store's commit protocol: every video's rows land exactly once, at a cost that does not grow with the table.

A write claims its videos in the small videos table, then appends: no join against the growing
detections table (a merge keyed on detection_id reads every stored key, so ingestion cost grew
with the square of the archive). Per batch of videos:

1. claim: one conditional merge_insert of "writing" rows carrying this writer's token. It inserts
   new videos and updates a row only when nobody is writing that video (or, once the rows were
   read, when its writer is dead); of two writers racing for a video the later commit conflicts,
   is re-run against the new version and no longer matches, so exactly one wins. Videos held by a
   live writer are waited for, then claimed again.
2. delete what an earlier attempt left of the claimed videos (only videos that had a row:
   a new video costs nothing here), by their indexed video_id;
3. append the detections, then the tracklets (one commit each for the whole batch);
4. mark the videos "done" where the claim is still this writer's.

A crash anywhere leaves the videos not done; the next write of them takes the dead claim over
and step 2 removes the partial rows. A writer is dead when its process is gone (checked exactly
on the same host) or, on another host, when its claim is older than the lease.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from kpr_model.distance import ReIDEmbeddings
from storage import sql
from storage.schema import (
    DETECTIONS,
    TRACKLETS,
    StoreError,
    detections_schema,
    detections_table,
    embedding_shape,
    embeddings_of,
    encoded_like,
    tracklets_schema,
    tracklets_table,
    videos_schema,
)
from storage.tables import StoreTables

log = logging.getLogger(__name__)

_REQUIRED_VIDEO_KEYS = ("video_id", "uri", "camera_id", "model_id")
_ID_BATCH = 1000
WRITING, DONE, FAILED = "writing", "done", "failed"
# How long a claim of a writer on another host counts as live (a claim is held only while its
# rows are committed: well under a second locally, seconds on an object store).
DEFAULT_LEASE_S = 600.0
_POLL_S = 0.05
# Commits between two compactions of the videos table by the writer itself: every commit adds a few small
# fragments and deletion files to it, and its merges slowed from 27 to 74 ms over 120 commits without one.
COMPACT_VIDEOS_EVERY = 32
# Tokens of the claims this process holds right now: a claim of this process not among them was
# left by an attempt that failed before it could release it, so it is dead.
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class VideoRows:
    """One video to commit: its video dict (video_id, uri, camera_id, model_id, ...), detections and tracklets.

    Rows are Arrow tables of the store schema or dicts (metadata + vector, parts, visibility); None
    or empty tracklets mean the video has none.
    """

    video: dict
    detections: pa.Table | Sequence[dict] | None
    tracklets: pa.Table | Sequence[dict] | None = None


@dataclass(frozen=True)
class _RowKind:
    """A per-video table of embedded rows (detections or tracklets): its name, key and builders."""

    table: str
    key: str
    schema: Callable[[int, int], pa.Schema]
    build: Callable[[Sequence[dict], ReIDEmbeddings], pa.Table]


_DETECTION_ROWS = _RowKind(DETECTIONS, "detection_id", detections_schema, detections_table)
_TRACKLET_ROWS = _RowKind(TRACKLETS, "track_id", tracklets_schema, tracklets_table)


def check_video(video: dict) -> None:
    """Refuse a video dict without the keys every video row needs."""
    missing = [key for key in _REQUIRED_VIDEO_KEYS if video.get(key) is None]
    if missing:
        raise StoreError(f"video dict lacks {', '.join(missing)}")


def _video_row(video: dict, status: str, error: str | None, n_detections: int, writer: str | None) -> dict:
    """One videos-table row from the caller's video dict."""
    check_video(video)
    return {
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
        "writer": writer,
    }


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


def _conform(video: dict, rows: pa.Table | Sequence[dict] | None, kind: _RowKind) -> pa.Table | None:
    """``rows`` as a table of the store schema after checking they belong to ``video`` (same video and model, unique keys)."""
    table = _as_table(rows, kind)
    if table is None:
        return None
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


@dataclass(frozen=True)
class _Prepared:
    """One video's checked rows, ready to append."""

    video: dict
    detections: pa.Table | None
    tracklets: pa.Table | None

    @property
    def video_id(self) -> str:
        """The video's id."""
        return self.video["video_id"]


def _prepare(item: VideoRows) -> _Prepared:
    """Check one video's dict and rows (store schema, same video and model, one embedding shape) before anything is written."""
    check_video(item.video)
    detections = _conform(item.video, item.detections, _DETECTION_ROWS)
    tracklets = _conform(item.video, item.tracklets, _TRACKLET_ROWS)
    if detections is not None and tracklets is not None:
        own, shape = embedding_shape(detections.schema), embedding_shape(tracklets.schema)
        if own != shape:
            raise StoreError(f"video {item.video['video_id']}: tracklets have D={shape[0]}, K={shape[1]} "
                             f"but its detections D={own[0]}, K={own[1]}")
    return _Prepared(item.video, detections, tracklets)


def _new_token() -> str:
    """A claim token naming this host and process, unique per claim."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex}"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_alive(row: dict, lease_s: float) -> bool:
    """Whether the writer holding a "writing" row may still be writing it (see the module docstring)."""
    host, _, rest = (row.get("writer") or "").partition("/")
    pid_text = rest.partition("/")[0]
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            with _ACTIVE_LOCK:
                return row["writer"] in _ACTIVE
        return _pid_alive(pid)
    return time.time() - float(row.get("ingested_at") or 0.0) < lease_s


def _rows_by_id(tables: StoreTables, video_ids: Sequence[str]) -> dict[str, dict]:
    """Current videos-table rows of ``video_ids`` (one query per 1,000 ids)."""
    rows: dict[str, dict] = {}
    for start in range(0, len(video_ids), _ID_BATCH):
        where = sql.is_in("video_id", video_ids[start : start + _ID_BATCH])
        for row in tables.videos.search().where(where).limit(None).to_arrow().to_pylist():
            rows[row["video_id"]] = row
    return rows


def _concat(tables: Sequence[pa.Table | None]) -> pa.Table | None:
    """The given tables (Nones skipped) as one, or None when there is no row."""
    kept = [t for t in tables if t is not None]
    return pa.concat_tables(kept) if kept else None


class VideoWriter:
    """Commits videos to a store's tables by the claim-append-done protocol (see the module docstring)."""

    def __init__(self, tables: StoreTables, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.tables = tables
        self.lease_s = lease_s
        self._commits = 0

    def write(self, batch: Sequence[VideoRows]) -> int:
        """Commit every video of ``batch`` (checked whole before anything is written); returns detection rows added.

        Rows added are the detections appended less those of an earlier attempt they replaced (0 when
        a re-run only replaces rows).
        """
        prepared = [_prepare(item) for item in batch]
        ids = [p.video_id for p in prepared]
        if len(set(ids)) != len(ids):
            raise StoreError("a batch holds the same video twice")
        if not prepared:
            return 0
        shapes = {embedding_shape(t.schema) for p in prepared for t in (p.detections, p.tracklets) if t is not None}
        if len(shapes) > 1:
            raise StoreError(f"a batch mixes embedding shapes (D, K): {sorted(shapes)}")
        for shape in shapes:
            if any(p.detections is not None for p in prepared):
                self.tables.detections_for_write(*shape)
            if any(p.tracklets is not None for p in prepared):
                self.tables.tracklets_for_write(*shape)
        videos = self.tables.keyed_videos()
        token = _new_token()
        with _ACTIVE_LOCK:
            _ACTIVE.add(token)
        try:
            added = 0
            pending = {p.video_id: p for p in prepared}
            while pending:
                won, existed = self._claim(list(pending.values()), token)
                try:
                    added += self._commit(won, existed, token)
                except BaseException as exc:
                    self._release(videos, won, token, exc)
                    raise
                for p in won:
                    del pending[p.video_id]
                self._after_commit()
            return added
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(token)

    def _after_commit(self) -> None:
        """Compact the small videos table every COMPACT_VIDEOS_EVERY commits, so a commit's merges stay as fast
        between two maintenance runs as after one (best effort: a concurrent writer's commit may win)."""
        self._commits += 1
        if self._commits % COMPACT_VIDEOS_EVERY == 0:
            try:
                self.tables.videos.optimize()
            except Exception as exc:  # a conflict with another writer's commit; the next round compacts
                log.debug("videos table not compacted this time: %s", exc)

    def record_failure(self, video: dict, error: str) -> None:
        """Mark a video failed with its error text (unless a writer holds it now), so a re-run retries it."""
        row = pa.Table.from_pylist([_video_row(video, FAILED, str(error), 0, None)], schema=videos_schema())
        merge = self.tables.keyed_videos().merge_insert("video_id")
        merge.when_matched_update_all(where=f"target.status <> {sql.quote(WRITING)}").when_not_matched_insert_all().execute(row)

    def _claim(self, pending: list[_Prepared], token: str) -> tuple[list[_Prepared], set[str]]:
        """Claim as many of ``pending`` as are free, waiting while live writers hold all of them.

        Returns the videos won and the ids of those that had a row, whose earlier rows are deleted.
        """
        won, existed = self._claim_unheld(pending, token)
        if won:
            return won, existed
        waited_since = None
        while True:
            current = _rows_by_id(self.tables, [p.video_id for p in pending])
            held = {vid: row for vid, row in current.items() if row["status"] == WRITING}
            live = {vid for vid, row in held.items() if _holder_alive(row, self.lease_s)}
            free = [p for p in pending if p.video_id not in live]
            if free:
                dead = sorted(row["writer"] for vid, row in held.items() if vid not in live and row["writer"])
                # Only rows read above may be taken over: a claim that conflicts is re-run by Lance against a
                # newer version, where a video absent from `current` may be done already by another writer;
                # taking that row would append the video again without deleting the other's rows.
                seen = [p.video_id for p in free if p.video_id in current]
                condition = sql.all_of([sql.is_in("target.video_id", seen),
                                        sql.any_of([f"target.status <> {sql.quote(WRITING)}",
                                                    sql.is_in("target.writer", dead) if dead else None])])
                self._merge_claims(free, token, condition)
                won = self._read_back(free, token)
                if won:
                    return won, {p.video_id for p in won if p.video_id in current}
            if waited_since is None:
                waited_since = time.monotonic()
                log.info("waiting for other writers of %d video(s): %s", len(live), ", ".join(sorted(live)[:3]))
            elif time.monotonic() - waited_since > self.lease_s:
                raise StoreError(f"videos {', '.join(sorted(live)[:3])} have been held by live writers for more "
                                 f"than {self.lease_s:.0f} s; is another ingestion stuck?")
            time.sleep(_POLL_S)

    def _claim_unheld(self, pending: list[_Prepared], token: str) -> tuple[list[_Prepared], set[str]]:
        """The common case in one commit, without reading first: take every video that nobody is writing.

        A video the merge updated rather than inserted had a row (a re-run, or a racing writer that
        finished it first, found when Lance re-ran the conflicting merge), so when any was updated
        every video won counts as having had one (a delete of a video without rows costs a lookup).
        """
        result = self._merge_claims(pending, token, f"target.status <> {sql.quote(WRITING)}")
        claimed = result.num_inserted_rows + result.num_updated_rows
        if not claimed:
            return [], set()
        won = pending if claimed == len(pending) else self._read_back(pending, token)
        return won, {p.video_id for p in won} if result.num_updated_rows else set()

    def _merge_claims(self, videos: list[_Prepared], token: str, condition: str | None):
        """One merge_insert of "writing" rows with ``token``: new videos inserted, rows matching ``condition`` updated."""
        rows = [_video_row(p.video, WRITING, None, 0, token) for p in videos]
        merge = self.tables.videos.merge_insert("video_id").when_matched_update_all(where=condition)
        return merge.when_not_matched_insert_all().execute(pa.Table.from_pylist(rows, schema=videos_schema()))

    def _read_back(self, videos: list[_Prepared], token: str) -> list[_Prepared]:
        """The ``videos`` whose row now carries ``token``: those a claim won."""
        after = _rows_by_id(self.tables, [p.video_id for p in videos])
        return [p for p in videos if after.get(p.video_id, {}).get("writer") == token]

    def _commit(self, won: list[_Prepared], existed: set[str], token: str) -> int:
        """Steps 2-4 for claimed videos: remove an earlier attempt's rows (of ``existed``), append, mark done; detection
        rows added (see write)."""
        removed = self._delete(sorted(existed))
        detections = _concat([p.detections for p in won])
        for rows, target in ((detections, self.tables.detections()),
                             (_concat([p.tracklets for p in won]), self.tables.tracklets())):
            if rows is not None:  # a store of an older schema version keeps its own embedding encoding
                target.add(encoded_like(rows, target.schema))
        done = [_video_row(p.video, DONE, None, 0 if p.detections is None else p.detections.num_rows, token)
                for p in won]
        merge = self.tables.videos.merge_insert("video_id").when_matched_update_all(where="target.writer = source.writer")
        result = merge.execute(pa.Table.from_pylist(done, schema=videos_schema()))
        if result.num_updated_rows != len(won):
            raise StoreError(f"{len(won) - result.num_updated_rows} of {len(won)} videos were taken over by another "
                             f"writer while this one committed them (claims older than {self.lease_s:.0f} s); "
                             f"ingest them again to store them once")
        return max(0, (0 if detections is None else detections.num_rows) - removed)

    def _delete(self, video_ids: list[str]) -> int:
        """Delete every detection and tracklet of ``video_ids`` (an earlier attempt's); returns detections deleted."""
        removed = 0
        for start in range(0, len(video_ids), _ID_BATCH):
            where = sql.is_in("video_id", video_ids[start : start + _ID_BATCH])
            if (tracklets := self.tables.tracklets()) is not None:
                tracklets.delete(where)
            if (detections := self.tables.detections()) is not None:
                removed += int(detections.delete(where).num_deleted_rows)
        return removed

    def _release(self, videos, won: list[_Prepared], token: str, exc: BaseException) -> None:
        """Best effort after a failed commit: mark the claimed videos failed so a re-run retries them at once."""
        rows = [_video_row(p.video, FAILED, f"commit failed: {exc!r}", 0, token) for p in won]
        try:
            merge = videos.merge_insert("video_id").when_matched_update_all(where="target.writer = source.writer")
            merge.execute(pa.Table.from_pylist(rows, schema=videos_schema()))
        except Exception as release_exc:  # the claim stays; it is dead once this process exits
            log.warning("could not release claims after a failed commit: %s", release_exc)
