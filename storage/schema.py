"""Arrow schemas of the store's LanceDB tables and builders that turn model output into rows.

Tables: ``detections`` (one row per person detection, keyed on detection_id), ``tracklets`` (one
row per tracklet of a video, keyed on track_id, with the aggregated embedding of its detections
and its best thumbnail) and ``videos`` (one row per ingested video, keyed on video_id).
Every table carries its schema version in its schema metadata; ``detections`` and ``tracklets``
also record the embedding dim D and the number of parts K they were created with. Version 3 packs
each row's int8 part codes, their scales and the visibility into one fixed-size binary ``parts`` column
(storage.part_codec.pack_parts), so a search reads its candidates' embeddings from two columns (vector,
parts) instead of four (vector, codes, scales, visibility): a read of a row by id costs one read per column.
Version 2 stored the codes and scales as a struct (two columns); version 1 stored the parts as float32. All
keep the ``visibility`` column for SQL filters and display, and the global vector float32: LanceDB 0.40 builds
its ANN index on float16 vectors 2-6x slower (bench/README.md). The column types say which encoding a table has, so a store
of an older version is read, searched and written in its own encoding.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from kpr_model.distance import ReIDEmbeddings
from storage.part_codec import PACKED_BYTES_PER_PART, decode_parts, encode_parts, pack_parts, unpack_parts

SCHEMA_VERSION = 3
# Versions whose tables this code reads and appends to (1: float32 part embeddings; 2: int8 codes + scales).
READABLE_VERSIONS = (1, 2, 3)
DETECTIONS = "detections"
TRACKLETS = "tracklets"
VIDEOS = "videos"
CASES = "cases"
IDENTITIES = "identities"
IDENTITY_EDITS = "identity_edits"
NUM_KEYPOINTS = 17

# The kinds of model a store records as its own (Store.model): part-based KPR, or a global ReID model.
KPR_KIND = "kpr"
GLOBAL_KIND = "global"

# The embedding columns of the detections and tracklets tables.
EMBEDDING_COLUMNS = ("vector", "parts", "visibility")

VERSION_KEY = b"kpr_schema_version"
DIM_KEY = b"kpr_embedding_dim"
PARTS_KEY = b"kpr_num_parts"


class StoreError(RuntimeError):
    """Anything the store refuses or cannot do: bad location, schema mismatch, malformed rows."""


class NotFoundError(StoreError):
    """An id the store does not hold (a detection or tracklet asked for by id), so callers can say "not found"."""


class RowsMovedError(StoreError):
    """Rows a search found were deleted or moved (maintenance renumbers them) before it read them: search again."""


def _floats(size: int) -> pa.DataType:
    """A fixed-size float32 list type."""
    return pa.list_(pa.float32(), size)


def _compact_parts(dim: int, num_parts: int) -> pa.DataType:
    """The version-2 parts column: int8 codes [K*D] and one float32 scale per part [K] (see storage.part_codec)."""
    return pa.struct([pa.field("codes", pa.list_(pa.int8(), num_parts * dim), nullable=False),
                      pa.field("scales", _floats(num_parts), nullable=False)])


def _packed_parts(dim: int, num_parts: int) -> pa.DataType:
    """The version-3 parts column: per row, int8 codes [K*D], float32 scales [K] and visibility [K] as bytes."""
    return pa.binary(num_parts * (dim + PACKED_BYTES_PER_PART))


def _is_packed(parts_type: pa.DataType) -> bool:
    """Whether a parts column of ``parts_type`` holds version 3's packed records (codes, scales, visibility)."""
    return pa.types.is_fixed_size_binary(parts_type)


def _parts_type(dim: int, num_parts: int, version: int) -> pa.DataType:
    """The parts column's type in ``version``'s encoding."""
    if version >= 3:
        return _packed_parts(dim, num_parts)
    return _compact_parts(dim, num_parts) if version == 2 else _floats(num_parts * dim)


def _embedding_fields(dim: int, num_parts: int, version: int) -> tuple[list[pa.Field], dict[bytes, str]]:
    """The embedding columns (global vector [D], parts [K*D], visibility [K]) in ``version``'s encoding, and the
    schema metadata recording the version, D and K."""
    if dim < 1 or num_parts < 1:
        raise StoreError(f"embedding dim and number of parts must be >= 1, got D={dim}, K={num_parts}")
    if version not in READABLE_VERSIONS:
        raise StoreError(f"unknown schema version {version}; known: {', '.join(map(str, READABLE_VERSIONS))}")
    fields = [
        pa.field("vector", _floats(dim), nullable=False),
        pa.field("parts", _parts_type(dim, num_parts, version), nullable=False),
        pa.field("visibility", _floats(num_parts), nullable=False),
    ]
    return fields, {VERSION_KEY: str(version), DIM_KEY: str(dim), PARTS_KEY: str(num_parts)}


def detections_schema(dim: int, num_parts: int, version: int = SCHEMA_VERSION) -> pa.Schema:
    """Schema of the detections table for embeddings of dim ``dim`` with ``num_parts`` parts (in ``version``'s encoding)."""
    embedding, metadata = _embedding_fields(dim, num_parts, version)
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


def tracklets_schema(dim: int, num_parts: int, version: int = SCHEMA_VERSION) -> pa.Schema:
    """Schema of the tracklets table: one aggregated embedding of dim ``dim`` with ``num_parts`` parts per tracklet
    (in ``version``'s encoding)."""
    embedding, metadata = _embedding_fields(dim, num_parts, version)
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
        # The token of the writer that claimed the video last (see storage.writer); null in older stores.
        pa.field("writer", pa.string()),
    ]
    return pa.schema(fields, metadata={VERSION_KEY: str(SCHEMA_VERSION)})


def holistic_weight(model: dict) -> float:
    """How many times the holistic entry counts among the visible parts in the part distance, by a store's model
    record (``Store.model``): a hybrid model's setting, 1 for any other model (and records written before it)."""
    return float(model.get("holistic_weight", 1.0))


def describe_model(model: dict) -> str:
    """A store's model record (``Store.model``) in words: its id, kind, shape and, for a hybrid, the whole-body
    entry's weight."""
    parts = f"K={model['num_parts']} parts, " if model["kind"] != GLOBAL_KIND else ""
    weight = holistic_weight(model)
    whole = f", whole body x{weight:g}" if weight != 1.0 else ""
    return f"{model['model_id']} ({model['kind']}, {parts}D={model['dim']}{whole})"


def check_version(schema: pa.Schema, table: str, uri: str, readable: Sequence[int] = READABLE_VERSIONS) -> None:
    """Raise StoreError unless ``schema`` carries one of the ``readable`` versions (the store refuses data it cannot
    read right)."""
    found = (schema.metadata or {}).get(VERSION_KEY)
    if found not in {str(version).encode() for version in readable}:
        written = "no schema version" if found is None else f"schema version {' '.join(found.decode(errors='replace').split())}"
        names = [str(version) for version in readable]
        known = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise StoreError(
            f"store at {uri}: table '{table}' has {written}, this code reads version {known}; "
            f"open it with the release that wrote it, or ingest into a new store location"
        )


def schema_version(schema: pa.Schema) -> int | None:
    """The schema version a table's ``schema`` records (None when it records none)."""
    found = (schema.metadata or {}).get(VERSION_KEY)
    return int(found) if found is not None and found.isdigit() else None


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


def _fixed_list(values: np.ndarray, size: int, kind: pa.DataType = pa.float32()) -> pa.FixedSizeListArray:
    """[N, size] values as a FixedSizeListArray of ``kind`` (float32 by default) without per-row Python work."""
    flat = pa.array(np.ascontiguousarray(values, dtype=kind.to_pandas_dtype()).reshape(-1), type=kind)
    return pa.FixedSizeListArray.from_arrays(flat, size)


def _stacked_fixed_list(values: list, size: int) -> pa.FixedSizeListArray:
    """Per-row float vectors of length ``size`` (none missing) as a fixed-size list array."""
    return _fixed_list(np.array([np.asarray(v, np.float32).reshape(size) for v in values], np.float32).reshape(-1, size), size)


def _embedding_arrays(embeddings: ReIDEmbeddings, schema: pa.Schema) -> dict[str, pa.Array]:
    """The vector, parts and visibility columns of ``embeddings`` in the encoding of ``schema``'s parts column."""
    n, dim, num_parts = len(embeddings), embeddings.dim, embeddings.num_parts
    parts_type = schema.field("parts").type
    if _is_packed(parts_type):
        packed = pack_parts(embeddings.parts.reshape(n, num_parts, dim), embeddings.visibility.reshape(n, num_parts))
        parts = pa.FixedSizeBinaryArray.from_buffers(parts_type, n, [None, pa.py_buffer(packed.tobytes())])
    elif pa.types.is_struct(parts_type):
        codes, scales = encode_parts(embeddings.parts.reshape(n, num_parts, dim))
        parts = pa.StructArray.from_arrays(
            [_fixed_list(codes.reshape(n, num_parts * dim), num_parts * dim, pa.int8()), _fixed_list(scales, num_parts)],
            fields=list(parts_type))
    else:
        parts = _fixed_list(embeddings.parts.reshape(n, num_parts * dim), num_parts * dim)
    return {
        "vector": _fixed_list(embeddings.global_emb.reshape(n, dim), dim),
        "parts": parts,
        "visibility": _fixed_list(embeddings.visibility.reshape(n, num_parts), num_parts),
    }


def _table_with_embeddings(what: str, schema: pa.Schema, rows: Sequence[dict], embeddings: ReIDEmbeddings,
                           vectors: dict[str, int], hint: str) -> pa.Table:
    """Arrow table of ``schema`` from metadata dicts + row-aligned embeddings.

    ``vectors`` names the fixed-size float metadata columns (bbox, keypoints) with their lengths.
    """
    if len(rows) != len(embeddings):
        raise StoreError(f"{len(rows)} {what} rows but {len(embeddings)} embeddings")
    try:
        arrays = _embedding_arrays(embeddings, schema)
        for field in schema:
            if field.name in arrays:
                continue
            values = [row.get(field.name) for row in rows]
            arrays[field.name] = (_stacked_fixed_list(values, vectors[field.name]) if field.name in vectors
                                  else pa.array(values, type=field.type))
        return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise StoreError(f"cannot build {what} table ({hint}): {exc}") from exc


def detections_table(rows: Sequence[dict], embeddings: ReIDEmbeddings, version: int = SCHEMA_VERSION) -> pa.Table:
    """Detections Arrow table from per-detection metadata (see detection_row) + one embedding batch (``version``'s encoding)."""
    return _table_with_embeddings(
        "detection", detections_schema(embeddings.dim, embeddings.num_parts, version), rows, embeddings,
        {"bbox": 4, "keypoints": NUM_KEYPOINTS * 3}, "bbox needs 4 numbers, keypoints 51, ids strings")


def tracklets_table(rows: Sequence[dict], embeddings: ReIDEmbeddings) -> pa.Table:
    """Tracklets Arrow table from per-tracklet metadata (see tracklet_row) + their aggregated embeddings (one row each)."""
    return _table_with_embeddings(
        "tracklet", tracklets_schema(embeddings.dim, embeddings.num_parts), rows, embeddings, {},
        "ids strings, times numbers, n_detections an integer")


def encoded_like(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` (detection or tracklet rows) with its embedding columns in the encoding of ``schema``'s types.

    What appending to a store table of another schema version needs (a version-1 table keeps float32
    embeddings); the columns are decoded and re-encoded only when their types differ.
    """
    if all(table.schema.field(name).type == schema.field(name).type for name in EMBEDDING_COLUMNS):
        return table
    for name, array in _embedding_arrays(embeddings_of(table), schema).items():
        table = table.set_column(table.schema.get_field_index(name), schema.field(name), array)
    return table


def _one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one array, copied only when it has several chunks: combining even one chunk copies it (the global
    vectors of a filter's 15k-row scan: 0.76 vs 0.06 ms, in memory)."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _list_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size list column as an [N, size] array of its own value type."""
    column = _one_array(column)
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def _stored_parts(column: pa.ChunkedArray, num_parts: int) -> np.ndarray:
    """The parts column of version 1 or 2 as float32 [N, K * D]."""
    column = _one_array(column)
    if not pa.types.is_struct(column.type):
        return _list_values(column).astype(np.float32, copy=False)
    codes, scales = (_list_values(child) for child in column.flatten())
    return decode_parts(codes.reshape(len(column), num_parts, -1), scales).reshape(len(column), -1)


def _packed_values(column: pa.ChunkedArray) -> np.ndarray:
    """A version-3 parts column (fixed-size binary) as its uint8 records [N, width], without a copy when it can."""
    column = _one_array(column)
    width = column.type.byte_width
    data = np.frombuffer(column.buffers()[1], np.uint8)
    return data[column.offset * width : (column.offset + len(column)) * width].reshape(len(column), width)


def _row_parts(value: Sequence[float] | np.ndarray | dict) -> np.ndarray:
    """One row's version-1 or 2 parts as float32 [K * D]: floats ([K * D] or [K, D]), or the compact {"codes", "scales"}."""
    if isinstance(value, dict):
        scales = np.asarray(value["scales"], np.float32)
        return decode_parts(np.asarray(value["codes"]).reshape(len(scales), -1), scales).reshape(-1)
    return np.asarray(value, np.float32).reshape(-1)


def embedding_columns(schema: pa.Schema) -> tuple[str, ...]:
    """The columns `embeddings_of` needs from a detections or tracklets table of ``schema``: a version-3 table's
    packed parts hold the visibility, so a search need not read that column too."""
    if _is_packed(schema.field("parts").type):
        return ("vector", "parts")
    return EMBEDDING_COLUMNS


def global_vectors(rows: pa.Table) -> np.ndarray:
    """The global ``vector`` column of detection or tracklet rows as float32 [N, D]."""
    return _list_values(rows["vector"]).astype(np.float32, copy=False)


def embeddings_of(rows: pa.Table | Sequence[dict]) -> ReIDEmbeddings:
    """Detection or tracklet rows (an Arrow table, or dicts with vector [D], parts (packed bytes, floats [K*D] or
    [K, D], or the compact {"codes", "scales"}) and, unless the parts are packed, visibility [K]) as float32
    ReIDEmbeddings, whichever encoding they were stored in."""
    if isinstance(rows, pa.Table):
        global_emb = global_vectors(rows)
        if _is_packed(rows.schema.field("parts").type):
            parts, visibility = unpack_parts(_packed_values(rows["parts"]), global_emb.shape[1])
        else:
            visibility = _list_values(rows["visibility"]).astype(np.float32, copy=False)
            parts = _stored_parts(rows["parts"], visibility.shape[1])
    else:
        global_emb = np.stack([np.asarray(r["vector"], np.float32) for r in rows])
        if rows and isinstance(rows[0]["parts"], bytes):
            packed = np.frombuffer(b"".join(r["parts"] for r in rows), np.uint8).reshape(len(rows), -1)
            parts, visibility = unpack_parts(packed, global_emb.shape[1])
        else:
            visibility = np.stack([np.asarray(r["visibility"], np.float32) for r in rows])
            parts = np.stack([_row_parts(r["parts"]) for r in rows])
    return ReIDEmbeddings(global_emb, parts.reshape(len(global_emb), visibility.shape[1], global_emb.shape[1]), visibility)
