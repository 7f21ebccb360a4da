"""Arrow schemas of the store's LanceDB tables and builders that turn model output into rows.

Tables: ``detections`` (one row per person detection, keyed on detection_id), ``tracklets`` (one
row per tracklet of a video, keyed on track_id, with the aggregated embedding of its detections
and its best thumbnail) and ``videos`` (one row per ingested video, keyed on video_id).
Every table carries ``SCHEMA_VERSION`` in its schema metadata; ``detections`` and ``tracklets``
also record the embedding dim D and the number of parts K they were created with.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from kpr_model.distance import ReIDEmbeddings

SCHEMA_VERSION = 1
DETECTIONS = "detections"
TRACKLETS = "tracklets"
VIDEOS = "videos"
NUM_KEYPOINTS = 17

# The kinds of model a store records as its own (Store.model): part-based KPR, or a global ReID model.
KPR_KIND = "kpr"
GLOBAL_KIND = "global"

VERSION_KEY = b"kpr_schema_version"
DIM_KEY = b"kpr_embedding_dim"
PARTS_KEY = b"kpr_num_parts"


class StoreError(RuntimeError):
    """Anything the store refuses or cannot do: bad location, schema mismatch, malformed rows."""


class NotFoundError(StoreError):
    """An id the store does not hold (a detection or tracklet asked for by id), so callers can say "not found"."""


def _floats(size: int) -> pa.DataType:
    """A fixed-size float32 list type."""
    return pa.list_(pa.float32(), size)


def _embedding_fields(dim: int, num_parts: int) -> tuple[list[pa.Field], dict[bytes, str]]:
    """The embedding columns (global vector [D], parts [K*D], visibility [K]) and the schema metadata recording D and K."""
    if dim < 1 or num_parts < 1:
        raise StoreError(f"embedding dim and number of parts must be >= 1, got D={dim}, K={num_parts}")
    fields = [
        pa.field("vector", _floats(dim), nullable=False),
        pa.field("parts", _floats(num_parts * dim), nullable=False),
        pa.field("visibility", _floats(num_parts), nullable=False),
    ]
    return fields, {VERSION_KEY: str(SCHEMA_VERSION), DIM_KEY: str(dim), PARTS_KEY: str(num_parts)}


def detections_schema(dim: int, num_parts: int) -> pa.Schema:
    """Schema of the detections table for embeddings of dim ``dim`` with ``num_parts`` parts."""
    embedding, metadata = _embedding_fields(dim, num_parts)
    fields = [
        pa.field("detection_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("timestamp", pa.float64(), nullable=False),
        pa.field("bbox", _floats(4), nullable=False),
        pa.field("det_score", pa.float32()),
        pa.field("keypoints", _floats(NUM_KEYPOINTS * 3), nullable=False),
        pa.field("track_id", pa.string()),
        *embedding,
        pa.field("thumbnail", pa.binary()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
    ]
    return pa.schema(fields, metadata=metadata)


def tracklets_schema(dim: int, num_parts: int) -> pa.Schema:
    """Schema of the tracklets table: one aggregated embedding of dim ``dim`` with ``num_parts`` parts per tracklet."""
    embedding, metadata = _embedding_fields(dim, num_parts)
    fields = [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("t_start", pa.float64(), nullable=False),
        pa.field("t_end", pa.float64(), nullable=False),
        pa.field("n_detections", pa.int32(), nullable=False),
        pa.field("best_detection_id", pa.string()),
        *embedding,
        pa.field("thumbnail", pa.binary()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
    ]
    return pa.schema(fields, metadata=metadata)


def videos_schema() -> pa.Schema:
    """Schema of the videos table (ingestion status per video)."""
    fields = [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("camera_id", pa.string(), nullable=False),
        pa.field("start_time", pa.float64()),
        pa.field("duration", pa.float64()),
        pa.field("num_frames", pa.int32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("n_detections", pa.int32()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("ingested_at", pa.float64()),
    ]
    return pa.schema(fields, metadata={VERSION_KEY: str(SCHEMA_VERSION)})


def check_version(schema: pa.Schema, table: str, uri: str) -> None:
    """Raise StoreError unless ``schema`` carries this code's SCHEMA_VERSION (the store refuses data it cannot read right)."""
    found = (schema.metadata or {}).get(VERSION_KEY)
    if found != str(SCHEMA_VERSION).encode():
        written = "no schema version" if found is None else f"schema version {' '.join(found.decode(errors='replace').split())}"
        raise StoreError(
            f"store at {uri}: table '{table}' has {written}, this code reads version {SCHEMA_VERSION}; "
            f"open it with the release that wrote it, or ingest into a new store location"
        )


def embedding_shape(schema: pa.Schema) -> tuple[int, int]:
    """(D, K) recorded in a detections or tracklets table's schema metadata."""
    metadata = schema.metadata or {}
    return int(metadata[DIM_KEY]), int(metadata[PARTS_KEY])


def detection_row(
    detection_id: str,
    video_id: str,
    camera_id: str,
    frame_index: int,
    timestamp: float,
    bbox: Sequence[float],
    model_id: str,
    det_score: float | None = None,
    keypoints: np.ndarray | Sequence[float] | None = None,
    track_id: str | None = None,
    thumbnail: bytes | None = None,
    run_id: str | None = None,
) -> dict:
    """Per-detection metadata (everything but embeddings) as a checked dict for detections_table.

    Missing keypoints are stored as zeros (confidence 0 = not detected): LanceDB refuses null
    entries in fixed-size float list columns.
    """
    box = np.asarray(bbox, dtype=np.float32).reshape(-1)
    if box.shape != (4,):
        raise StoreError(f"detection {detection_id}: bbox must be 4 numbers (x, y, w, h), got {box.size}")
    kps = np.zeros(NUM_KEYPOINTS * 3, np.float32) if keypoints is None else np.asarray(keypoints, np.float32).reshape(-1)
    if kps.shape != (NUM_KEYPOINTS * 3,):
        raise StoreError(f"detection {detection_id}: keypoints must be 17 x (x, y, conf), got {kps.size} numbers")
    return {
        "detection_id": detection_id,
        "video_id": video_id,
        "camera_id": camera_id,
        "frame_index": int(frame_index),
        "timestamp": float(timestamp),
        "bbox": box,
        "det_score": None if det_score is None else float(det_score),
        "keypoints": kps,
        "track_id": track_id,
        "thumbnail": thumbnail,
        "model_id": model_id,
        "run_id": run_id,
    }


def tracklet_row(
    track_id: str,
    video_id: str,
    camera_id: str,
    t_start: float,
    t_end: float,
    n_detections: int,
    best_detection_id: str | None,
    thumbnail: bytes | None,
    model_id: str,
    run_id: str | None = None,
) -> dict:
    """Per-tracklet metadata (everything but the aggregated embedding) as a checked dict for tracklets_table."""
    if n_detections < 1:
        raise StoreError(f"tracklet {track_id}: needs at least one detection, got {n_detections}")
    if not t_start <= t_end:
        raise StoreError(f"tracklet {track_id}: t_start {t_start} is after t_end {t_end}")
    return {
        "track_id": track_id,
        "video_id": video_id,
        "camera_id": camera_id,
        "t_start": float(t_start),
        "t_end": float(t_end),
        "n_detections": int(n_detections),
        "best_detection_id": best_detection_id,
        "thumbnail": thumbnail,
        "model_id": model_id,
        "run_id": run_id,
    }


def _fixed_list(values: np.ndarray, size: int) -> pa.FixedSizeListArray:
    """[N, size] float32 values as a FixedSizeListArray without per-row Python work."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, size)


def _stacked_fixed_list(values: list, size: int) -> pa.FixedSizeListArray:
    """Per-row float vectors of length ``size`` (none missing) as a fixed-size list array."""
    return _fixed_list(np.array([np.asarray(v, np.float32).reshape(size) for v in values], np.float32).reshape(-1, size), size)


def _table_with_embeddings(what: str, schema: pa.Schema, rows: Sequence[dict], embeddings: ReIDEmbeddings,
                           vectors: dict[str, int], hint: str) -> pa.Table:
    """Arrow table of ``schema`` from metadata dicts + row-aligned embeddings.

    ``vectors`` names the fixed-size float metadata columns (bbox, keypoints) with their lengths.
    """
    if len(rows) != len(embeddings):
        raise StoreError(f"{len(rows)} {what} rows but {len(embeddings)} embeddings")
    n, dim, num_parts = len(rows), embeddings.dim, embeddings.num_parts
    try:
        arrays = {
            "vector": _fixed_list(embeddings.global_emb.reshape(n, dim), dim),
            "parts": _fixed_list(embeddings.parts.reshape(n, num_parts * dim), num_parts * dim),
            "visibility": _fixed_list(embeddings.visibility.reshape(n, num_parts), num_parts),
        }
        for field in schema:
            if field.name in arrays:
                continue
            values = [row.get(field.name) for row in rows]
            arrays[field.name] = (_stacked_fixed_list(values, vectors[field.name]) if field.name in vectors
                                  else pa.array(values, type=field.type))
        return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise StoreError(f"cannot build {what} table ({hint}): {exc}") from exc


def detections_table(rows: Sequence[dict], embeddings: ReIDEmbeddings) -> pa.Table:
    """Detections Arrow table from per-detection metadata (see detection_row) + one embedding batch."""
    return _table_with_embeddings(
        "detection", detections_schema(embeddings.dim, embeddings.num_parts), rows, embeddings,
        {"bbox": 4, "keypoints": NUM_KEYPOINTS * 3}, "bbox needs 4 numbers, keypoints 51, ids strings")


def tracklets_table(rows: Sequence[dict], embeddings: ReIDEmbeddings) -> pa.Table:
    """Tracklets Arrow table from per-tracklet metadata (see tracklet_row) + their aggregated embeddings (one row each)."""
    return _table_with_embeddings(
        "tracklet", tracklets_schema(embeddings.dim, embeddings.num_parts), rows, embeddings, {},
        "ids strings, times numbers, n_detections an integer")


def _fixed_list_column(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size float list column as a float32 [N, size] array."""
    column = table[name].combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(column), column.type.list_size)


def embeddings_of(rows: pa.Table | Sequence[dict]) -> ReIDEmbeddings:
    """Detection rows (Arrow table or dicts with vector [D], parts [K*D] or [K, D], visibility [K]) as ReIDEmbeddings."""
    if isinstance(rows, pa.Table):
        global_emb = _fixed_list_column(rows, "vector")
        visibility = _fixed_list_column(rows, "visibility")
        parts = _fixed_list_column(rows, "parts")
    else:
        global_emb = np.stack([np.asarray(r["vector"], np.float32) for r in rows])
        visibility = np.stack([np.asarray(r["visibility"], np.float32) for r in rows])
        parts = np.stack([np.asarray(r["parts"], np.float32) for r in rows])
    return ReIDEmbeddings(global_emb, parts.reshape(len(global_emb), visibility.shape[1], global_emb.shape[1]), visibility)
