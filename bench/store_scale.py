"""Write cost of the store as it grows to --rows detections, against a plain LanceDB append of the same tables.

Writes the search benchmark's synthetic videos (bench/search_bench.py: 250 detections each, K=8,
D=128, 3 KB thumbnails) through Store.write_videos, --videos-per-commit videos per commit, and in
the same run appends every video's table to a plain LanceDB table with `add` (one per video: the
baseline). Both get the same compaction schedule (every --maintain-fragments commits of the store:
Store.maintain, which the ingest flow runs too, and the plain table's own optimize). At probe points
(10k, 100k, 1M rows, ...) --probe-videos videos are committed one per write_video and timed: the
per-video commit cost as the table grows. Then re-writes of stored videos (a re-run's path), an
exactly-once check of every row, optionally the search benchmark on the written store, and
bench/s3_check.py (two concurrent ingests into an s3:// store on a local S3 server: "ok" or why not).
Writes bench/results/store_scale.json (merged into: bench/store_rows.py adds its keys). Example:
    .venv/bin/python -m bench.store_scale --rows 1000000 --workdir /tmp/kpr_store_scale --search
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.results_io import RESULTS, command_line, merge_result
from bench.search_bench import SyntheticWorld, WorldConfig
from storage import Store
from storage.schema import detections_schema
from storage.writer import VideoRows

PROBES = (10_000, 100_000, 1_000_000, 10_000_000)
EXTRAPOLATE_TO = 10_000_000
GOAL_COMMIT_GROWTH = 1.3
GOAL_WRITE_RATIO = 0.5
SEARCH_KEYS = ("recall_at_50", "recall_at_50_filtered", "p95_ms", "p95_filtered_ms", "p50_ms", "p50_filtered_ms")


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[store_scale] {message}", file=sys.stderr, flush=True)


@dataclass
class Timings:
    """What the write loop measured: per batch and per probe commit, with the rows stored before each."""

    batches: list[tuple[int, int, float]] = field(default_factory=list)   # (rows before, rows, seconds)
    appends: list[tuple[int, int, float]] = field(default_factory=list)   # plain add per video
    probes: dict[int, list[float]] = field(default_factory=dict)          # probe rows -> per-video commit seconds
    maintenance: list[dict] = field(default_factory=list)
    generate_s: float = 0.0


def rate(samples: Sequence[tuple[int, int, float]], low: float, high: float) -> float:
    """Rows per second of the samples taken while the table held between ``low`` and ``high`` rows."""
    kept = [(rows, seconds) for before, rows, seconds in samples if low <= before < high]
    return sum(r for r, _ in kept) / max(sum(s for _, s in kept), 1e-9)


def write_all(world: SyntheticWorld, store: Store, plain: lancedb.table.Table, per_commit: int, maintain_fragments: int,
              probe_videos: int, plain_folder: Path) -> Timings:
    """Write every video of ``world`` to both stores, timing commits, appends, probes and maintenance.

    A probe commits ``probe_videos`` videos one by one once the store holds a probe's rows; the last
    probe, at the full size, writes videos of a larger world beyond the last one (``world`` itself stays
    exactly --rows detections).
    """
    config, timings = world.config, Timings()
    probes = [*(p for p in PROBES if p < config.rows), config.rows]
    extra = SyntheticWorld(replace(config, rows=config.rows + probe_videos * config.per_video))
    rows_stored, index, commits = 0, 0, 0
    while index < extra.config.videos:
        probe = next((p for p in probes if rows_stored >= p and p not in timings.probes), None)
        if probe is None and index >= config.videos:
            break
        size, count = (1, probe_videos) if probe is not None else (per_commit, 1)
        for _ in range(count):
            source = extra if probe is not None else world
            last = source.config.videos if probe is not None else config.videos
            tick = time.perf_counter()
            built = [source.video(i) for i in range(index, min(index + size, last))]
            timings.generate_s += time.perf_counter() - tick
            rows = sum(t.num_rows for _, t in built)
            tick = time.perf_counter()
            store.write_videos([VideoRows(video, table) for video, table in built])
            seconds = time.perf_counter() - tick
            if probe is not None:
                timings.probes.setdefault(probe, []).append(seconds)
            else:
                timings.batches.append((rows_stored, rows, seconds))
            for _, table in built:
                tick = time.perf_counter()
                plain.add(table)
                timings.appends.append((rows_stored, table.num_rows, time.perf_counter() - tick))
            rows_stored += rows
            index += len(built)
            commits += 1
        if commits >= maintain_fragments:
            commits = 0
            report = store.maintain(cleanup_older_than=datetime.timedelta(0))
            tick = time.perf_counter()
            plain.optimize(cleanup_older_than=datetime.timedelta(0))
            timings.maintenance.append({"rows": rows_stored, "store_s": report["seconds"],
                                        "plain_s": round(time.perf_counter() - tick, 3)})
            recent = [s * 1e3 * config.per_video / r for _, r, s in timings.batches[-maintain_fragments:]]
            log(f"{rows_stored:,} rows: {np.median(recent):.1f} ms per video committed, "
                f"maintain {report['seconds']:.1f} s (plain folder {folder_gib(plain_folder):.1f} GiB)")
    return timings


def rewrites(world: SyntheticWorld, store: Store, videos: int) -> list[float]:
    """Seconds of re-writing ``videos`` stored videos one by one (a re-run after a crash: delete, then append)."""
    seconds = []
    for index in np.linspace(0, world.config.videos - 1, videos).astype(int):
        video, table = world.video(int(index))
        tick = time.perf_counter()
        store.write_video(video, table)
        seconds.append(time.perf_counter() - tick)
    return seconds


def exactly_once(store: Store, rows: int) -> dict:
    """Whether the store holds each written detection once: row count, distinct ids, done videos."""
    ids = pa.concat_tables(list(store.iter_detections(["detection_id"], batch_rows=262_144)))["detection_id"]
    distinct = pc.count_distinct(ids).as_py()
    return {"expected_rows": rows, "rows": len(ids), "distinct_ids": distinct,
            "lost_rows": rows - distinct, "duplicate_rows": len(ids) - distinct,
            "videos_done": store.count_videos(status="done")}


def folder_gib(path: Path) -> float:
    """Size of a folder's files in GiB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def extrapolate(timings: Timings, rows: int, target: int) -> dict:
    """Seconds to write ``target`` rows, from a linear fit of commit seconds per row against the rows stored
    (growth never taken as negative), plus maintenance at the measured seconds per row."""
    before = np.array([b for b, _, _ in timings.batches], float)
    per_row = np.array([s / r for _, r, s in timings.batches])
    slope, intercept = np.polyfit(before, per_row, 1)
    if slope < 0:  # no measurable growth: the mean cost per row
        slope, intercept = 0.0, float(per_row.mean())
    commits = intercept * target + slope * target**2 / 2
    maintain_per_row = sum(m["store_s"] for m in timings.maintenance) / max(rows, 1)
    return {"rows": target, "commit_seconds": round(float(commits)), "seconds_per_row_growth_per_million": float(slope) * 1e6,
            "maintain_seconds_linear": round(maintain_per_row * target),
            "hours": round((float(commits) + maintain_per_row * target) / 3600, 2)}


def summarise(timings: Timings, rows: int, per_video: int) -> dict:
    """The store_scale.json keys of the write part."""
    per_video_ms = {p: round(float(np.median(s)) * 1e3, 1) for p, s in timings.probes.items()}
    top = max(timings.probes) if timings.probes else None
    window = (0.9 * rows, float(rows) + 1)
    ours, plain = rate(timings.batches, *window), rate(timings.appends, *window)
    total_batches = sum(s for _, _, s in timings.batches)
    total_appends = sum(s for _, _, s in timings.appends)
    return {
        "rows": rows,
        "write_rows_per_s": round(sum(r for _, r, _ in timings.batches) / total_batches),
        "append_rows_per_s": round(sum(r for _, r, _ in timings.appends) / total_appends),
        "write_rows_per_s_last_10pct": round(ours),
        "append_rows_per_s_last_10pct": round(plain),
        "write_ratio_vs_append": round(ours / plain, 3) if ours and plain else None,
        "commit_p50_ms_10k": per_video_ms.get(PROBES[0]),
        "commit_p50_ms_1m": per_video_ms.get(1_000_000),
        "commit_p50_ms_by_rows": {str(p): ms for p, ms in sorted(per_video_ms.items())},
        "commit_growth_top_vs_first": None if top is None else round(per_video_ms[top] / per_video_ms[min(per_video_ms)], 3),
        "maintenance": timings.maintenance,
        "generate_seconds": round(timings.generate_s, 1),
        "rows_per_video": per_video,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kpr_store_scale"),
                        help="where the store and the plain table are written (replaced)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--videos-per-commit", type=int, default=8, help="videos per Store.write_videos call")
    parser.add_argument("--maintain-fragments", type=int, default=256, help="store commits between maintenance runs")
    parser.add_argument("--probe-videos", type=int, default=20, help="videos committed one by one at each probe point")
    parser.add_argument("--rewrites", type=int, default=20, help="stored videos re-written at the end (a re-run's path)")
    parser.add_argument("--search", action="store_true",
                        help="then run bench.search_bench on the written store and copy its recall and latency")
    parser.add_argument("--skip-s3", action="store_true", help="do not run bench.s3_check (two ingests on a local S3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=RESULTS / "store_scale.json", help="result JSON (merged into; '-': print only)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and merge its keys into the result JSON."""
    args = parse_args(argv)
    world = SyntheticWorld(WorldConfig(rows=args.rows, parts=8, dim=128, identities=10_000, lookalike_groups=500,
                                       cameras=50, per_video=250, video_seconds=600.0, sample_fps=5.0,
                                       thumbnail_bytes=3000, seed=args.seed))
    shutil.rmtree(args.workdir, ignore_errors=True)
    store = Store.open(args.workdir / "store")
    plain_folder = args.workdir / "plain"
    plain = lancedb.connect(plain_folder).create_table("detections", schema=detections_schema(128, 8))
    started = time.perf_counter()
    timings = write_all(world, store, plain, args.videos_per_commit, args.maintain_fragments, args.probe_videos,
                        plain_folder)
    log(f"wrote {args.rows:,} rows in {time.perf_counter() - started:.0f} s; re-writing {args.rewrites} videos")
    rewritten = rewrites(world, store, args.rewrites)
    final = store.maintain(cleanup_older_than=datetime.timedelta(0))
    result = summarise(timings, args.rows, world.config.per_video) | {
        "videos_per_commit": args.videos_per_commit,
        "maintain_every_commits": args.maintain_fragments,
        "rewrite_p50_ms": round(float(np.median(rewritten)) * 1e3, 1),
        "exactly_once": exactly_once(store, args.rows + args.probe_videos * world.config.per_video),
        "final_maintain_s": final["seconds"],
        "store_gib": round(folder_gib(args.workdir / "store"), 2),
        "bytes_per_detection_store": round(final["total_bytes"] / store.count_detections()),
        "extrapolated": extrapolate(timings, args.rows, EXTRAPOLATE_TO),
        "goals": {"commit_growth": GOAL_COMMIT_GROWTH, "write_ratio_vs_append": GOAL_WRITE_RATIO},
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line("bench.store_scale", argv),
    }
    shutil.rmtree(plain_folder, ignore_errors=True)
    merge_result(args.output, result)
    if args.search:
        from bench import search_bench

        (args.workdir / "store" / "bench_build.json").write_text(json.dumps({"mode": "bench.store_scale", **result}))
        search_bench.main(["--db", str(args.workdir / "store"), "--reuse", "--rows", str(store.count_detections())])
        searched = json.loads((RESULTS / "search.json").read_text())
        merge_result(args.output, {key: searched.get(key) for key in SEARCH_KEYS})
    if not args.skip_s3:
        from bench.s3_check import s3_check

        merge_result(args.output, {"s3": s3_check(args.workdir)})
    return 0

if __name__ == "__main__":
    sys.exit(main())
