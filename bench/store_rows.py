"""Bytes per stored detection, compact vs float32, and the exact re-rank's recall on compact parts, per model shape.

For the demo model's shape (D=128, K=8) and the official one (D=512, K=8 parts, a separate 512-d
global vector), the same synthetic rows (bench/search_bench.py's SyntheticWorld, 3 KB stand-in JPEG
thumbnails) go into two stores: this schema version's compact encoding, through Store.write_video,
and schema version 1's float32 encoding. Both are maintained (compaction, old versions removed,
scalar and ANN indexes); bytes per detection = the detections table's bytes on disk / rows.
Recall@50: per query, the 500 candidates nearest by the exact global distance are re-ranked by the
KPR distance on the compact store's parts and on the float32 parts; the share of float32's top-50
found in compact's. ANN recall@50 (Store.nearest vs the exact global top-50) and p50 latencies of
Store.nearest and PersonSearch.search are measured on both stores, and LanceDB's ANN index build
and query times on float32 vs float16 global vectors (why the global vector stays float32).
Example, from the repository root:
    .venv/bin/python -m bench.store_rows
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from bench.results_io import RESULTS, command_line, merge_result
from bench.search_bench import Query, SyntheticWorld, WorldConfig, make_queries, percentile_ms
from kpr_model.distance import ReIDEmbeddings, kpr_distance
from storage import PersonSearch, Store, detections_table, embeddings_of
from storage.schema import DETECTIONS, EMBEDDING_COLUMNS
from storage.indexes import vector_index_config, vector_index_plan
from storage.store import DEFAULT_NPROBES

# Model shapes (D, K): the demo's KPRConfig.demo and the official SOLIDER configuration.
CONFIGURATIONS = {"demo": (128, 8), "official": (512, 8)}
FLOAT32_VERSION = 1
GOAL_BYTES = 10_000
GOAL_RECALL = 0.98
K = 50


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(uri: Path, world: SyntheticWorld, version: int | None) -> tuple[list[str], ReIDEmbeddings]:
    """A maintained store of every world video at ``uri``: compact through Store.write_video (``version`` None), or
    the float32 rows of schema ``version`` appended with LanceDB; returns the detection ids and float32 embeddings."""
    shutil.rmtree(uri, ignore_errors=True)
    store = Store.open(uri)
    ids, embeddings, table = [], [], None
    for index in range(world.config.videos):
        video, rows, batch = world.video_rows(index)
        if version is None:
            store.write_video(video, detections_table(rows, batch))
        elif table is None:
            table = lancedb.connect(uri).create_table(DETECTIONS, detections_table(rows, batch, version))
        else:
            table.add(detections_table(rows, batch, version))
        ids += [row["detection_id"] for row in rows]
        embeddings.append(batch)
    report = Store.open(uri).maintain(cleanup_older_than=datetime.timedelta(0))
    if report["detections"] != len(ids):
        raise RuntimeError(f"{uri} holds {report['detections']} detections, {len(ids)} were written")
    return ids, ReIDEmbeddings.concat(embeddings)


def on_disk(uri: Path, rows: int) -> dict:
    """The detections table's bytes on disk per row: in all, and of its indexes."""
    folder = uri / f"{DETECTIONS}.lance"
    return {"bytes_per_detection": round(folder_bytes(folder) / rows),
            "index_bytes_per_detection": round(folder_bytes(folder / "_indices") / rows)}


def top(distances: np.ndarray) -> set[int]:
    """Positions of the K smallest distances (ties by position)."""
    return set(np.argsort(distances, kind="stable")[:K].tolist())


def rerank_recall(store: Store, ids: Sequence[str], truth: ReIDEmbeddings, queries: Sequence[Query],
                  candidates: int) -> float:
    """Mean share of the float32 re-rank's top-K that the re-rank on the store's parts finds, on the same candidates."""
    recalls = []
    for query in queries:
        nearest = np.argsort(((truth.global_emb - query.embedding.global_emb) ** 2).sum(axis=1), kind="stable")
        chosen = nearest[:candidates]
        stored = embeddings_of(store.detections_by_ids([ids[i] for i in chosen], EMBEDDING_COLUMNS))
        exact = top(kpr_distance(query.embedding, truth.select(chosen))[0])
        recalls.append(len(exact & top(kpr_distance(query.embedding, stored)[0])) / K)
    return round(float(np.mean(recalls)), 4)


def timed(call, repeat: Sequence) -> tuple[list, float]:
    """``call(item)`` for each item, and the p50 of their durations in ms."""
    results, seconds = [], []
    for item in repeat:
        tick = time.perf_counter()
        results.append(call(item))
        seconds.append(time.perf_counter() - tick)
    return results, percentile_ms(seconds, 50)


def reads(uri: Path, ids: Sequence[str], truth: ReIDEmbeddings, queries: Sequence[Query], candidates: int) -> dict:
    """ANN recall@K against the exact global top-K, and p50 latencies of the store's reads, on one store."""
    store = Store.open(uri, create=False)
    vectors = [query.embedding.global_emb[0] for query in queries]
    timed(lambda v: store.nearest(v, None, K, ["detection_id"]), vectors[:5])
    found, nearest_ms = timed(lambda v: store.nearest(v, None, K, ["detection_id"]), vectors)
    recalls = [len(set(hits["detection_id"].to_pylist())
                   & {ids[i] for i in np.argsort(((truth.global_emb - v) ** 2).sum(axis=1))[:K]}) / K
               for hits, v in zip(found, vectors)]
    search = PersonSearch(store)
    _, search_ms = timed(lambda q: search.search(q.embedding, k=K, candidates=candidates), queries)
    without = ["detection_id", *EMBEDDING_COLUMNS]
    _, with_thumbnails_ms = timed(lambda v: store.nearest(v, None, candidates, [*without, "thumbnail"]), vectors)
    _, without_thumbnails_ms = timed(lambda v: store.nearest(v, None, candidates, without), vectors)
    return {"ann_recall_at_50": round(float(np.mean(recalls)), 4), "nearest_top50_p50_ms": nearest_ms,
            "search_p50_ms": search_ms, "candidates_p50_ms_with_thumbnails": with_thumbnails_ms,
            "candidates_p50_ms_without_thumbnails": without_thumbnails_ms}


def vector_index_cost(uri: Path, rows: int, dim: int, queries: int = 20) -> dict:
    """Seconds to build the store's ANN index plan and p50 ms of a top-50 query, on ``rows`` random unit vectors
    stored as float32 and as float16."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    config = vector_index_config(vector_index_plan(rows, dim))
    cost = {}
    for name, kind in {"float32": pa.float32(), "float16": pa.float16()}.items():
        shutil.rmtree(uri, ignore_errors=True)
        flat = pa.array(vectors.astype(kind.to_pandas_dtype()).ravel(), type=kind)
        table = lancedb.connect(uri).create_table("vectors", pa.table({"vector": pa.FixedSizeListArray.from_arrays(flat, dim)}))
        tick = time.perf_counter()
        table.create_index("vector", config=config)
        build_s = time.perf_counter() - tick
        _, query_ms = timed(lambda v: table.search(v, vector_column_name="vector").distance_type("l2")
                            .minimum_nprobes(DEFAULT_NPROBES).limit(K).to_arrow(), vectors[:queries])
        cost[name] = {"index_build_s": round(build_s, 1), "query_p50_ms": query_ms}
    shutil.rmtree(uri)
    return {"rows": rows, **cost}


def measure(name: str, args: argparse.Namespace, log) -> dict:
    """Both stores of one model shape: bytes per detection, the re-rank's recall on compact parts, read latencies."""
    dim, parts = CONFIGURATIONS[name]
    world = SyntheticWorld(WorldConfig(args.rows, parts, dim, args.identities, args.identities // 10, args.cameras,
                                       args.per_video, 600.0, 5.0, args.thumbnail_bytes, args.seed))
    queries = make_queries(world, args.queries, 5, 2.0, args.seed)
    compact_uri, float32_uri = args.db / name / "compact", args.db / name / "float32"
    log(f"{name}: D={dim}, K={parts}, writing {args.rows} rows twice")
    ids, truth = build(compact_uri, world, None)
    build(float32_uri, world, FLOAT32_VERSION)
    compact, float32 = on_disk(compact_uri, args.rows), on_disk(float32_uri, args.rows)
    log(f"{name}: {compact['bytes_per_detection']} bytes per detection (float32: {float32['bytes_per_detection']}); "
        "measuring recall and reads")
    result = {
        "dim": dim, "parts": parts,
        "bytes_per_detection": compact["bytes_per_detection"],
        "bytes_per_detection_float32": float32["bytes_per_detection"],
        "index_bytes_per_detection": compact["index_bytes_per_detection"],
        "index_bytes_per_detection_float32": float32["index_bytes_per_detection"],
        # vector, packed parts (codes, then a float32 scale and visibility per part), the visibility column
        "embedding_bytes": 4 * dim + parts * dim + 8 * parts + 4 * parts,
        "embedding_bytes_float32": 4 * dim + 4 * parts * dim + 4 * parts,
        "recall_at_50_rerank": rerank_recall(Store.open(compact_uri, create=False), ids, truth, queries, args.candidates),
        "compact_reads": reads(compact_uri, ids, truth, queries, args.candidates),
        "float32_reads": reads(float32_uri, ids, truth, queries, args.candidates),
        "vector_index_float32_vs_float16": vector_index_cost(args.db / name / "vectors", args.index_rows, dim),
    }
    if not args.keep:
        shutil.rmtree(args.db / name)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("/tmp/kpr_store_rows"), help="folder for the stores (rebuilt)")
    parser.add_argument("--keep", action="store_true", help="keep the stores after measuring")
    parser.add_argument("--configurations", default=",".join(CONFIGURATIONS),
                        help=f"comma-separated model shapes to measure, of {', '.join(CONFIGURATIONS)}")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--identities", type=int, default=400)
    parser.add_argument("--cameras", type=int, default=10)
    parser.add_argument("--per-video", type=int, default=250, help="detections per video (one write_video each)")
    parser.add_argument("--thumbnail-bytes", type=int, default=3000, help="size of each row's stand-in JPEG")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=500, help="ANN candidates the exact part distance re-ranks")
    parser.add_argument("--index-rows", type=int, default=5000,
                        help="random vectors the float32 vs float16 ANN index comparison builds on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "store_scale.json"), help="JSON file to merge into, - to print")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.configurations.split(",")) - set(CONFIGURATIONS))
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}; known: {', '.join(CONFIGURATIONS)}")
    if min(args.rows, args.queries, args.index_rows) < 1 or args.candidates < K:
        parser.error(f"--rows, --queries and --index-rows must be >= 1 and --candidates >= {K}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure each configuration and merge its keys into the store-scale result."""
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    measured = {name: measure(name, args, log) for name in args.configurations.split(",")}
    official = measured.get("official")
    merge_result(args.output, {
        "bytes_per_detection": {name: m["bytes_per_detection"] for name, m in measured.items()},
        "bytes_per_detection_float32": {name: m["bytes_per_detection_float32"] for name, m in measured.items()},
        "recall_at_50_compact_parts": {name: m["recall_at_50_rerank"] for name, m in measured.items()},
        "compact_rows": {
            "rows": args.rows, "thumbnail_bytes": args.thumbnail_bytes, "queries": args.queries,
            "candidates": args.candidates, "configurations": measured,
            "meets_goals": None if official is None else bool(official["bytes_per_detection"] <= GOAL_BYTES
                                                              and official["recall_at_50_rerank"] >= GOAL_RECALL),
            "seconds": round(time.perf_counter() - started, 1),
            "load_average": round(os.getloadavg()[0], 2),
            "command": command_line("bench.store_rows", argv),
        },
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
