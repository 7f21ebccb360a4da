"""Index upkeep of a store: scalar indexes for keys and filters, the ANN index on the global vector, maintenance."""
from __future__ import annotations

import json
import math
import time
from datetime import timedelta

import lancedb
from lancedb.index import Bitmap, BTree, IvfHnswSq, IvfPq

from storage.schema import CASES, DETECTIONS, IDENTITIES, IDENTITY_EDITS, TRACKLETS, VIDEOS, StoreError
from storage.tables import StoreTables

# Scalar indexes per table (every table of StoreTables.all): key lookups, a re-run's deletes by video, tracklets,
# camera/time filters.
SCALAR_INDEXES = {
    VIDEOS: (("video_id", BTree),),
    DETECTIONS: (("detection_id", BTree), ("video_id", BTree), ("track_id", BTree), ("timestamp", BTree),
                 ("camera_id", Bitmap)),
    TRACKLETS: (("track_id", BTree), ("video_id", BTree)),
    CASES: (("case_id", BTree),),
    IDENTITIES: (("identity_id", BTree),),
    IDENTITY_EDITS: (),
}
# Field metadata of the `vector` column that records how its ANN index was built (and on how many rows).
VECTOR_INDEX_KEY = "kpr:vector_index"
VECTOR_INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ")
# Chosen by bench/search_bench.py at 1M rows, D=128 (see bench/README.md): IVF_PQ with D/4 sub-vectors
# beat D/8 on recall and IVF_HNSW_SQ on latency and build time.
DEFAULT_VECTOR_INDEX = "IVF_PQ"
DEFAULT_VECTOR_INDEX_MIN_ROWS = 10_000
# An index trained on n rows is retrained once the table holds this many times n (IVF partitions ~ sqrt(rows)).
_RETRAIN_GROWTH = 2.0
_ROWS_PER_PARTITION = 256
# "Keep every old version": an age no version of a store can reach.
_KEEP_ALL_VERSIONS = timedelta(days=365_000)


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


def fragments(table: lancedb.table.Table) -> int:
    """Number of data fragments (files written by separate commits) of a table."""
    return int(table.stats()["fragment_stats"]["num_fragments"])


def _versions(table: lancedb.table.Table) -> set[int]:
    """Version numbers of a table still on disk."""
    return {int(v["version"]) for v in table.list_versions()}


def vector_index(tables: StoreTables) -> dict | None:
    """The plan the current ANN index was built with ({} when built without one), or None when there is no ANN index."""
    table = tables.detections()
    if table is None or not any(index.columns == ["vector"] for index in table.list_indices()):
        return None
    recorded = (table.schema.field("vector").metadata or {}).get(VECTOR_INDEX_KEY.encode())
    return json.loads(recorded) if recorded else {}


def build_vector_index(tables: StoreTables, kind: str = DEFAULT_VECTOR_INDEX, num_partitions: int | None = None,
                       num_sub_vectors: int | None = None) -> dict:
    """Train and build the ANN index on the global vector now (replacing any); returns its plan (see vector_index_plan)."""
    table = tables.detections()
    if table is None:
        raise StoreError(f"store at {tables.uri} has no detections to index")
    plan = vector_index_plan(table.count_rows(), tables.shape[0], kind, num_partitions, num_sub_vectors)
    table.create_index("vector", config=vector_index_config(plan), replace=True)
    table.update_field_metadata({"path": "vector", "metadata": {VECTOR_INDEX_KEY: json.dumps(plan)}})
    return plan


def _scalar_index(table: lancedb.table.Table, column: str, config: type, rebuild: bool) -> str:
    """Create the scalar index on ``column`` when missing (or always with ``rebuild``); says "created" or "kept"."""
    if not rebuild and any(column in index.columns for index in table.list_indices()):
        return "kept"
    table.create_index(column, config=config(), replace=True)
    return "created"


def index_stats(tables: StoreTables) -> dict[str, dict]:
    """Per index (``table.column``): its type and how many rows it covers or not yet (the ANN index also its plan)."""
    report = {}
    for name, table in tables.all().items():
        for index in table.list_indices():
            stats = table.index_stats(index.name)
            report[f"{name}.{index.columns[0]}"] = {"type": stats.index_type, "indexed_rows": stats.num_indexed_rows,
                                                    "unindexed_rows": stats.num_unindexed_rows}
    if "detections.vector" in report:
        report["detections.vector"].update(vector_index(tables) or {})
    return report


def _index_report(tables: StoreTables, actions: dict[str, str]) -> dict[str, dict]:
    """`index_stats` with what maintenance did to each index ("created", "rebuilt" or "kept") first."""
    return {key: {"action": actions.get(key, "kept"), **entry} for key, entry in index_stats(tables).items()}


def ensure_indexes(tables: StoreTables, vector_index_min_rows: int, rebuild: bool) -> dict[str, dict]:
    """Create missing scalar indexes (all with ``rebuild``) and the ANN index when due; one report entry per index."""
    actions = {f"{name}.{column}": _scalar_index(table, column, config, rebuild)
               for name, table in tables.all().items() for column, config in SCALAR_INDEXES[name]}
    table = tables.detections()
    if table is not None:
        rows, plan = table.count_rows(), vector_index(tables)
        trained = None if plan is None else plan.get("trained_rows")
        if rows >= vector_index_min_rows and (rebuild or not trained or rows >= _RETRAIN_GROWTH * trained):
            build_vector_index(tables, (plan or {}).get("type", DEFAULT_VECTOR_INDEX))
            actions["detections.vector"] = "created" if plan is None else "rebuilt"
        elif plan is not None:
            actions["detections.vector"] = "kept"
    return _index_report(tables, actions)


def maintain(tables: StoreTables, cleanup_older_than: timedelta | None,
             vector_index_min_rows: int = DEFAULT_VECTOR_INDEX_MIN_ROWS) -> dict:
    """Compact, fold new rows into indexes, clean up old versions and build due indexes; returns a report.

    See Store.maintain for the report's keys.
    """
    started = time.perf_counter()
    keep = _KEEP_ALL_VERSIONS if cleanup_older_than is None else cleanup_older_than
    named = tables.all()
    versions_before = {name: _versions(t) for name, t in named.items()}
    detections = named.get(DETECTIONS)
    fragments_before = 0 if detections is None else fragments(detections)
    for table in named.values():
        table.optimize(cleanup_older_than=keep)
    indexes = ensure_indexes(tables, vector_index_min_rows, rebuild=False)
    if any(entry["action"] != "kept" for entry in indexes.values()):
        for table in named.values():  # again: the index builds' commits are versions too
            table.optimize(cleanup_older_than=keep)
    return {
        "detections": 0 if detections is None else detections.count_rows(),
        "tracklets": 0 if TRACKLETS not in named else named[TRACKLETS].count_rows(),
        "videos": named[VIDEOS].count_rows(),
        "fragments_before": fragments_before,
        "fragments_after": 0 if detections is None else fragments(detections),
        "versions_removed": sum(len(versions_before[name] - _versions(t)) for name, t in named.items()),
        "indexes": indexes,
        "total_bytes": sum(int(t.stats()["total_bytes"]) for t in named.values()),
        "seconds": round(time.perf_counter() - started, 3),
    }
