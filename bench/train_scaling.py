"""Training throughput with 1 and 2 Ray Train DDP workers on the same synthetic crops, in one run.

Each worker gets ``--cpus-per-worker`` CPU(s) and as many torch threads; samples/s counts the
crops of all workers together and excludes Ray start-up and the first (warm-up) epoch. By default only
the final checkpoint is written, after the measured window, so the figure is training compute and
gradient all-reduce, not checkpoint I/O (which costs the same per epoch whatever the worker count).
Writes bench/results/train_scaling.json (``device``, ``workers_1_samples_per_s``,
``workers_2_samples_per_s``, ``ratio``, ``command``). From the repository root:
``.venv/bin/python -m bench.train_scaling``.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.results_io import RESULTS, command_line, write_result
from training.synthetic import WorldConfig, export_reid_crops
from training.train import train as run_training
from training.train_config import TrainConfig
from workers.ray_stages import ensure_ray


def steady_samples_per_s(history: list[dict], samples_per_epoch: int) -> float:
    """Samples/s over the epochs after the first one (the first pays for compilation, caches and start-up)."""
    if len(history) < 2:
        raise ValueError("need at least 2 epochs to leave out the warm-up epoch")
    seconds = history[-1]["train_s"] - history[0]["train_s"]
    return round(samples_per_epoch * (len(history) - 1) / seconds, 2)


def measure(crops: Path, workdir: Path, workers: int, args: argparse.Namespace) -> dict:
    """Train ``args.epochs`` epochs with ``workers`` workers; steady-state samples/s and the run's figures."""
    cfg = TrainConfig(data_root=str(crops), out=str(workdir / f"ckpt{workers}"), preset=args.preset, epochs=args.epochs,
                      workers=workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.gpu,
                      identities_per_batch=args.p, instances_per_identity=args.k,
                      storage_path=str(workdir / "runs"), run_name=f"scaling-{workers}",
                      checkpoint_every=args.checkpoint_every or args.epochs)
    result = run_training(cfg)
    per_epoch = (result["steps"] // result["epochs_completed"]) * args.p * args.k * workers
    return {"samples_per_s": steady_samples_per_s(result["history"], per_epoch), "samples_per_epoch": per_epoch,
            "epochs": result["epochs_completed"], "train_s": result["train_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=240, help="synthetic identities (60%% go to training)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of synthetic video per camera")
    parser.add_argument("--preset", default="demo", choices=["tiny", "demo", "default"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--p", type=int, default=8, help="identities per batch (per worker)")
    parser.add_argument("--k", type=int, default=4, help="instances per identity")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="epochs between checkpoints (default: only the final one, written after the measured window)")
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--output", default=RESULTS / "train_scaling.json", help="result JSON ('-': print only)")
    args = parser.parse_args()
    ensure_ray(num_cpus=None)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        world = dataclasses.replace(WorldConfig.small(seed=5), n_identities=args.identities, duration_s=args.duration,
                                    n_cameras=4, walkers_per_frame=8.0)
        export_reid_crops(workdir / "crops", world, train_fraction=0.6)
        one = measure(workdir / "crops", workdir, 1, args)
        two = measure(workdir / "crops", workdir, 2, args)
    device = torch.cuda.get_device_name(0) if args.gpu else f"cpu ({platform.machine()}, {args.cpus_per_worker} core(s) per worker)"
    result = {
        "device": device,
        "preset": args.preset,
        "batch_per_worker": args.p * args.k,
        "checkpoint_every": args.checkpoint_every or args.epochs,
        "workers_1_samples_per_s": one["samples_per_s"],
        "workers_2_samples_per_s": two["samples_per_s"],
        "ratio": round(two["samples_per_s"] / one["samples_per_s"], 3),
        "runs": {"1": one, "2": two},
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command_line("bench.train_scaling"),
    }
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
