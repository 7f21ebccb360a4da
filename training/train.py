"""Single-process KPR training on a ReID crops folder (Market-1501 layout), with a final held-out evaluation.

The step function is plain PyTorch so that a Ray Train loop can call it per worker; this module
runs it in one process with an identity-balanced (PK) sampler and a time budget.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

from kpr_model.checkpoint import save_checkpoint
from kpr_model.config import KPRConfig
from kpr_model.distance import kpr_distance
from kpr_model.encoder import KPREncoder
from kpr_model.losses import KPRLoss
from kpr_model.model import KPR
from training.augment import AugmentConfig, augment
from training.evaluation import evaluate_rankings
from training.pk_sampler import PKSampler
from training.reid_layout import DatasetError, ReIDSample, read_reid_layout
from training.samples import LoadedSample, load_samples, make_batch

REPORT_EVERY_S = 15.0
PRESETS = {"tiny": KPRConfig.tiny, "demo": KPRConfig.demo, "default": KPRConfig}


@dataclass
class TrainConfig:
    """What to train on, how long, and the optimiser; defaults suit the CPU demo."""

    data_root: str
    out: str
    preset: str = "demo"
    epochs: int = 30
    max_minutes: float | None = None
    identities_per_batch: int = 8
    instances_per_identity: int = 4
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    seed: int = 1
    threads: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def model_config(self, num_classes: int) -> KPRConfig:
        if self.preset not in PRESETS:
            raise DatasetError(f"unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        return PRESETS[self.preset](num_classes=num_classes)


def _lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to 1% over training progress in [0, 1]."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def evaluate(model: KPR, config: KPRConfig, query: list[LoadedSample], gallery: list[LoadedSample]) -> dict:
    """mAP / CMC of ``model`` on a query/gallery split, with prompts, using the product's part distance."""
    encoder = KPREncoder(model, config)

    def embed(items: list[LoadedSample]):
        return encoder.embed([s.image for s in items], [s.keypoints for s in items], [s.negatives for s in items])

    distances = kpr_distance(embed(query), embed(gallery))
    metrics = evaluate_rankings(distances, np.array([s.pid for s in query]), np.array([s.pid for s in gallery]),
                                np.array([s.camid for s in query]), np.array([s.camid for s in gallery]))
    return metrics.as_dict()


def train(cfg: TrainConfig) -> dict:
    """Train, evaluate on the held-out query/gallery split, save a checkpoint; returns the metrics."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_samples = load_samples(read_reid_layout(cfg.data_root, "train"))
    pid_map = {pid: i for i, pid in enumerate(sorted({s.pid for s in train_samples}))}
    config = cfg.model_config(num_classes=len(pid_map))
    model = KPR(config)
    criterion = KPRLoss(config.loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = PKSampler([pid_map[s.pid] for s in train_samples], cfg.identities_per_batch, cfg.instances_per_identity, seed=cfg.seed)
    steps_per_epoch = len(sampler)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    started = time.perf_counter()
    step, log, history, last_report = 0, {}, [], started
    print(f"training {config.backbone} at {config.image_size[0]}x{config.image_size[1]} on {len(train_samples)} crops "
          f"of {len(pid_map)} identities, {steps_per_epoch} steps/epoch", file=sys.stderr)
    model.train()
    for epoch in range(cfg.epochs):
        out_of_time = False
        for batch_indices in sampler.epoch(epoch):
            elapsed = time.perf_counter() - started
            if budget_s is not None and elapsed >= budget_s:
                out_of_time = True
                break
            progress = max(step / total_steps, elapsed / budget_s if budget_s else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(progress, cfg.warmup_fraction)
            items = [augment(*train_samples[i].arrays(), rng, cfg.augment) for i in batch_indices]
            images, prompts, labels = make_batch(items, config)
            output = model(images, prompts)
            loss, log = criterion(output, torch.tensor([pid_map[train_samples[i].pid] for i in batch_indices]), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if out_of_time:
            break
        history.append({"epoch": epoch + 1, **{k: round(v, 4) for k, v in log.items()}})
        if time.perf_counter() - last_report >= REPORT_EVERY_S or epoch + 1 == cfg.epochs:
            last_report = time.perf_counter()
            print(f"epoch {epoch + 1} ({last_report - started:.0f} s): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in log.items() if not k.startswith("acc")), file=sys.stderr)
    train_s = time.perf_counter() - started
    model.eval()
    metrics = evaluate(model, config, load_samples(read_reid_layout(cfg.data_root, "query")),
                       load_samples(read_reid_layout(cfg.data_root, "gallery")))
    result = {"steps": step, "epochs_completed": len(history), "train_s": round(train_s, 1),
              "samples_per_s": round(step * sampler.batch_size / max(train_s, 1e-9), 1),
              "heldout": metrics, "last_losses": log, "train_config": {k: v for k, v in asdict(cfg).items() if k != "augment"}}
    result["model_id"] = save_checkpoint(model, config, cfg.out, metadata={"training": result})
    result["checkpoint"] = cfg.out
    print(f"held-out mAP {metrics['map']:.3f}, rank-1 {metrics['rank1']:.3f}; checkpoint {cfg.out}", file=sys.stderr)
    return result
