"""KPR training entry point: the loop in this process or on Ray Train workers, held-out evaluation, checkpoint.

``train`` runs training/loop.py on a ``TrainConfig`` (training/train_config.py) either in this
process (workers=0, what the demo uses) or as a Ray Train TorchTrainer with ``workers`` DDP workers
(training/ray_train.py), then scores the final model with the benchmark's prompted mode on the
dataset's query/gallery split and saves the project checkpoint.
"""
from __future__ import annotations

import sys
from dataclasses import asdict

import torch

from kpr_model.checkpoint import save_checkpoint
from kpr_model.encoder import KPREncoder
from training.benchmark import SplitData, benchmark_split
from training.loop import LoopResult, run_loop
from training.ray_train import train_on_ray
from training.train_config import TrainConfig
from training.training_split import TrainingSplit


class LocalContext:
    """The loop's context when it runs alone in this process: rank 0 of 1, no Ray, no checkpoints."""

    rank, world_size, device = 0, 1, torch.device("cpu")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def stop_now(self, wants_to_stop: bool) -> bool:
        return wants_to_stop

    def report(self, metrics: dict, state: dict | None) -> None:
        return None

    def restored_state(self) -> dict | None:
        return None


def train(cfg: TrainConfig) -> dict:
    """Train (here or on Ray Train workers), evaluate on the held-out query/gallery split, save the checkpoint."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    split = TrainingSplit.of(cfg)
    if cfg.workers:
        result = train_on_ray(cfg, split.num_classes)
    else:
        config = cfg.model_config(split.num_classes)
        samples, labels = split.load(config)
        result = run_loop(cfg.loop_settings(), config, samples, labels, LocalContext(), cfg.augment, cfg.backbone_weights)
    return finish(cfg, result)


def finish(cfg: TrainConfig, result: LoopResult) -> dict:
    """Evaluate the trained model on the held-out split and save it as the project checkpoint at ``cfg.out``."""
    model = result.model.eval()
    heldout = SplitData.load(cfg.dataset, cfg.data_root)
    metrics = benchmark_split(heldout, KPREncoder(model, model.config), modes=("prompt",))["prompt"].metrics.as_dict()
    summary = {"steps": result.steps, "epochs_completed": result.epochs_completed, "train_s": result.train_s,
               "samples_per_s": result.samples_per_s, "workers": cfg.workers, "heldout": metrics,
               "last_losses": result.last_losses, "history": result.history,
               "train_config": {k: v for k, v in asdict(cfg).items() if k != "augment"}}
    summary["model_id"] = save_checkpoint(model, model.config, cfg.out, metadata={"training": summary})
    summary["checkpoint"] = cfg.out
    print(f"held-out mAP {metrics['map']:.3f}, rank-1 {metrics['rank1']:.3f}; checkpoint {cfg.out}", file=sys.stderr)
    return summary
