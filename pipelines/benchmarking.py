"""Benchmark a KPR checkpoint (and outside baselines) on datasets and write the report: shared by `kpr bench` and its flow."""
from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import Sequence

from kpr_model.encoder import KPREncoder
from kpr_model.global_onnx import GlobalOnnxEncoder
from pipelines.bench_report import write_report
from pipelines.errors import UserError
from training.benchmark import MODES, SplitData, run_benchmark, uses_camera_term


def benchmark_checkpoint(model: str, datasets: dict[str, str], out: str, modes: Sequence[str] = MODES,
                         baselines: dict[str, str] | None = None, rerank: bool = False, top_k: int = 10,
                         queries_shown: int = 20, command: str | None = None) -> dict:
    """Evaluate ``model`` on each dataset (name -> root) in ``modes`` plus ONNX ``baselines`` (name -> file).

    Writes benchmark.json, benchmark.md, cmc_<dataset>.png and ranking_<dataset>.html into ``out``;
    returns the report's metadata, one printable line per (dataset, method) and the written paths.
    """
    baselines = dict(baselines or {})
    if set(baselines) & set(MODES):
        raise UserError(f"baseline names must differ from the KPR modes {', '.join(MODES)}")
    started = time.perf_counter()
    encoder = KPREncoder.from_checkpoint(model)
    encoders = {name: GlobalOnnxEncoder(path).vectors for name, path in baselines.items()}
    splits = [SplitData.load(name, root) for name, root in datasets.items()]
    benchmarks = []
    for data in splits:
        print(f"benchmarking {data.name}: {len(data.query)} queries, {len(data.gallery)} gallery crops", file=sys.stderr)
        if encoder.config.camera_embeddings:
            print(f"camera embedding {'on' if uses_camera_term(encoder.config, data.name) else 'off'} for {data.name} "
                  f"(it is added only on {encoder.config.camera_dataset or 'its training dataset'}, the dataset "
                  "whose cameras it learned)", file=sys.stderr)
        benchmarks.append(run_benchmark(data, encoder, modes, encoders, rerank, top_k, queries_shown))
    meta = {"model": model, "model_id": encoder.model_id, "modes": list(modes), "baselines": baselines, "rerank": rerank,
            "wall_s": round(time.perf_counter() - started, 1), "command": command,
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    written = write_report(out, benchmarks, meta)
    lines = [f"{bench.data.name:<16} {name:<20} mAP {result.metrics.map:.3f}  rank-1 {result.metrics.rank1:.3f}  "
             f"mINP {result.metrics.mINP:.3f}"
             for bench in benchmarks for name, result in bench.results.items()]
    return {"meta": meta, "lines": lines, "written": [str(p) for p in written.values()]}
