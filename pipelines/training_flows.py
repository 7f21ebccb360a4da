"""Prefect flows: KPR training and benchmarking as an operator schedules them. Orchestration only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipelines.benchmarking import benchmark_checkpoint
from training.benchmark import MODES
from training.train import train
from training.train_config import TrainConfig
from workers.ray_stages import ensure_ray


def training_report(result: dict) -> str:
    """The run's Markdown artifact: held-out metrics, throughput and the per-epoch losses."""
    heldout = result["heldout"]
    lines = [
        f"# Training run: checkpoint `{result['checkpoint']}` (model_id `{result['model_id']}`)",
        "| held-out mAP | rank-1 | rank-5 | mINP | epochs | steps/worker | samples/s | Ray workers | train s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {heldout['map']:.3f} | {heldout['rank1']:.3f} | {heldout['rank5']:.3f} | {heldout['mINP']:.3f} "
        f"| {result['epochs_completed']} | {result['steps']} | {result['samples_per_s']:.1f} | {result['workers']} "
        f"| {result['train_s']:.0f} |",
        "",
        "| epoch | loss |",
        "|---|---|",
        *[f"| {h['epoch']} | {h['losses'].get('loss', float('nan')):.4f} |" for h in result["history"]],
    ]
    return "\n".join(lines)


@task(name="train-kpr")
def run_training(config: TrainConfig) -> dict:
    """Train (Ray Train workers when config.workers > 0), evaluate on held-out identities, save the checkpoint."""
    return train(config)


@flow(name="train-kpr")
def train_kpr(config: str | None = None, overrides: dict[str, Any] | None = None, ray_address: str | None = None) -> dict:
    """Train KPR from a YAML config file (``config``) and/or settings in ``overrides``; publishes a run report.

    A re-run with the same run_name and storage_path resumes from the last Ray Train checkpoint.
    """
    settings = TrainConfig.from_yaml(config, overrides) if config else TrainConfig.from_dict(overrides or {})
    if settings.workers:
        ensure_ray(ray_address)
    result = run_training(settings)
    get_run_logger().info("held-out mAP %.3f, rank-1 %.3f", result["heldout"]["map"], result["heldout"]["rank1"])
    create_markdown_artifact(training_report(result), key="training-report", description="KPR training report")
    return {k: v for k, v in result.items() if k != "history"}


@task(name="benchmark-kpr")
def run_benchmark_task(model: str, datasets: dict[str, str], out: str, modes: list[str], baselines: dict[str, str],
                       rerank: bool) -> dict:
    """Evaluate the checkpoint and write the report files into ``out``."""
    return benchmark_checkpoint(model, datasets, out, modes=modes, baselines=baselines, rerank=rerank,
                                command=f"prefect flow benchmark-kpr (model={model})")


@flow(name="benchmark-kpr")
def benchmark_kpr(model: str, datasets: dict[str, str], out: str, modes: list[str] | None = None,
                  baselines: dict[str, str] | None = None, rerank: bool = False) -> dict:
    """Benchmark checkpoint ``model`` on ``datasets`` (name -> root) like `kpr bench`; the Markdown report becomes an artifact."""
    report = run_benchmark_task(model, datasets, out, list(modes or MODES), dict(baselines or {}), rerank)
    create_markdown_artifact((Path(out) / "benchmark.md").read_text(), key="benchmark-report",
                             description="KPR benchmark report")
    return report
