"""Peak extra host memory and wall time of ``kpr_model.distance.part_distance`` on a large query x gallery.

See bench/README.md. Example (the committed 10,000 x 100,000 run at D = 128), from the repository root:
    .venv/bin/python -m bench.part_distance_memory --queries 10000 --gallery 100000 --dim 128 \
        --output bench/results/part_distance_memory.json
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.results_io import PRINT_ONLY, append_result, command_line
from kpr_model.distance import part_distance

GB = 1e9


def _proc_status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) as an int."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field")


def _reset_peak_rss() -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux ``clear_refs`` code 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _random_parts(rng: np.random.Generator, n: int, parts: int, dim: int, block: int = 8192) -> np.ndarray:
    """L2-normalised float32 features [n, parts, dim], generated in blocks to keep the generator's peak small."""
    out = np.empty((n, parts, dim), np.float32)
    for start in range(0, n, block):
        x = rng.standard_normal((min(block, n - start), parts, dim), dtype=np.float32)
        out[start:start + block] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return out


def _random_visibility(rng: np.random.Generator, n: int, parts: int) -> np.ndarray:
    """Visibility [n, parts]: ~30% of the entries 0, some rows fully invisible (exercising the max + 1 fill)."""
    vis = rng.uniform(0.0, 1.0, (n, parts)).astype(np.float32)
    vis[rng.uniform(0.0, 1.0, (n, parts)) < 0.3] = 0.0
    vis[rng.uniform(0.0, 1.0, n) < 0.001] = 0.0
    return vis


def _reference_entries(qf: np.ndarray, qv: np.ndarray, gf: np.ndarray, gv: np.ndarray,
                       rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Brute-force float64 distance of the (rows[i], cols[i]) pairs; NaN where no part is mutually visible."""
    diff = qf[rows].astype(np.float64) - gf[cols].astype(np.float64)
    per_part = np.sqrt((diff * diff).sum(axis=-1))
    weight = np.sqrt((qv[rows] > 0).astype(np.float64) * (gv[cols] > 0))
    total = weight.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weight * per_part).sum(axis=1) / total, np.nan)


def run_benchmark(args: argparse.Namespace) -> dict[str, object]:
    """Build random inputs, time one part_distance call under a reset peak RSS, check sampled entries."""
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    qf = _random_parts(rng, args.queries, args.parts, args.dim)
    gf = _random_parts(rng, args.gallery, args.parts, args.dim)
    qv = _random_visibility(rng, args.queries, args.parts)
    gv = _random_visibility(rng, args.gallery, args.parts)
    input_bytes = qf.nbytes + gf.nbytes + qv.nbytes + gv.nbytes
    output_bytes = 4 * args.queries * args.gallery

    # Warm-up on a slice: pages in the kernels' code and starts the thread pool, which are not the call's memory.
    part_distance(qf[:64], qv[:64], gf[:2 * args.chunk_size], gv[:2 * args.chunk_size], chunk_size=args.chunk_size)
    _reset_peak_rss()
    rss_before = _proc_status_kb("VmRSS") * 1024
    start = time.perf_counter()
    dist = part_distance(qf, qv, gf, gv, chunk_size=args.chunk_size)
    wall_s = time.perf_counter() - start
    peak_after = _proc_status_kb("VmHWM") * 1024
    peak_extra = peak_after - rss_before

    rows = rng.integers(0, args.queries, args.check)
    cols = rng.integers(0, args.gallery, args.check)
    expected = _reference_entries(qf, qv, gf, gv, rows, cols)
    got = dist[rows, cols].numpy().astype(np.float64)
    comparable = np.isfinite(expected)
    max_abs_err = float(np.abs(got[comparable] - expected[comparable]).max())
    fill = float(dist.max())
    fill_ok = bool(np.all(got[~comparable] == fill))
    if max_abs_err > 1e-4 or not fill_ok:
        raise SystemExit(f"part_distance disagrees with the reference: max error {max_abs_err}, fill ok {fill_ok}")

    return {
        "queries": args.queries,
        "gallery": args.gallery,
        "parts": args.parts,
        "dim": args.dim,
        "chunk_size": args.chunk_size,
        "threads": args.threads,
        "wall_s": round(wall_s, 2),
        "pairs_per_s": round(args.queries * args.gallery / wall_s),
        "input_gb": round(input_bytes / GB, 3),
        "output_gb": round(output_bytes / GB, 3),
        "rss_before_call_gb": round(rss_before / GB, 3),
        "peak_rss_during_call_gb": round(peak_after / GB, 3),
        "peak_extra_incl_output_gb": round(peak_extra / GB, 3),
        "peak_extra_excl_output_gb": round((peak_extra - output_bytes) / GB, 3),
        "chunk_working_set_gb": round(4 * args.queries * min(args.chunk_size, args.gallery) / GB, 3),
        "checked_entries": args.check,
        "checked_entries_without_visible_part": int((~comparable).sum()),
        "max_abs_err_vs_reference": max_abs_err,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} CPU",
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--parts", type=int, default=9, help="K + 1 (holistic + K parts)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=4096, help="part_distance's gallery chunk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", type=int, default=2000, help="random entries checked against numpy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="")
    parser.add_argument("--output", default=PRINT_ONLY,
                        help="append the result to this JSON list (the committed one: "
                             "bench/results/part_distance_memory.json; default '-': print only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its JSON and append it to ``--output`` unless that is '-'."""
    args = parse_args(argv)
    result = run_benchmark(args) | {"command": command_line("bench.part_distance_memory", argv), "note": args.note}
    append_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
