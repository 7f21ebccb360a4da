"""The KPR training loop, written once for one process and for every Ray Train worker.

What differs between the two (rank, DDP wrapping, reporting, checkpoint restore, agreeing to stop)
sits behind ``WorkerContext``; the epochs, the schedule, fixbase and the PK batches are here.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from kpr_model.config import KPRConfig
from kpr_model.losses import KPRLoss, body_part_attention_loss, relational_distillation_loss
from kpr_model.model import KPR, KPROutput
from training.augment import AugmentConfig, augment, bipo
from training.pk_sampler import PKSampler
from training.samples import LoadedSample, make_batch

REPORT_EVERY_S = 15.0


class WorkerContext(Protocol):
    """Where one copy of the loop runs: its rank among world_size copies and how it talks to the others."""

    rank: int
    world_size: int
    device: torch.device

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model to call in training (DDP-wrapped when several workers train together)."""

    def stop_now(self, wants_to_stop: bool) -> bool:
        """Whether every worker stops here (they must agree, or DDP would hang)."""

    def report(self, metrics: dict, state: dict | None) -> None:
        """Publish an epoch's metrics and, when given, the training state to checkpoint."""

    def restored_state(self) -> dict | None:
        """The training state of the latest checkpoint of this run (None on a fresh start)."""


@dataclass
class LoopSettings:
    """The optimisation settings the loop needs (a subset of TrainConfig, plain values only)."""

    epochs: int
    identities_per_batch: int
    instances_per_identity: int
    optimizer: str
    lr: float
    weight_decay: float
    warmup_epochs: float
    fixbase_epochs: int
    part_warmup_epochs: int
    seed: int
    max_minutes: float | None
    checkpoint_every: int


@dataclass
class Distillation:
    """A teacher's embedding of every training sample [N, Dt] and the weight of the relational loss that matches
    the batch's pairwise similarities of KPR's (BN) foreground and concatenated part embeddings to the teacher's."""

    embeddings: np.ndarray
    weight: float

    def loss(self, output: KPROutput, batch_indices: list[int], device: torch.device) -> torch.Tensor:
        """The weighted relational loss of one batch (``output`` the KPROutput of the samples ``batch_indices``)."""
        teacher = torch.from_numpy(self.embeddings[batch_indices]).to(device)
        return self.weight * (relational_distillation_loss(output.embeddings["bn_foreground"], teacher)
                              + relational_distillation_loss(output.embeddings["concat_parts"], teacher))


@dataclass
class LoopResult:
    """What the loop leaves behind: the trained model (unwrapped) and its history."""

    model: KPR
    steps: int
    epochs_completed: int
    train_s: float
    samples_per_s: float
    last_losses: dict
    history: list[dict]


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to 1% over training progress in [0, 1]."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


def _optimizer(model: KPR, settings: LoopSettings) -> torch.optim.Optimizer:
    """Adam or SGD with two parameter groups: the pretrained backbone (frozen during fixbase) and the rest."""
    backbone = list(model.backbone.features.parameters())
    backbone_ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [{"params": backbone, "name": "backbone"}, {"params": rest, "name": "heads"}]
    if settings.optimizer == "adam":
        return torch.optim.Adam(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, weight_decay=settings.weight_decay, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {settings.optimizer!r}")


def _set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float, fixbase: bool) -> None:
    """Scheduled lr for every group; the backbone group gets 0 during fixbase epochs (torchreid's open layers)."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if fixbase and group["name"] == "backbone" else base_lr * factor


def run_loop(
    settings: LoopSettings,
    config: KPRConfig,
    samples: list[LoadedSample],
    labels: list[int],
    ctx: WorkerContext,
    augment_config: AugmentConfig,
    backbone_weights: str | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
    distillation: Distillation | None = None,
) -> LoopResult:
    """Train a KPR of ``config`` on ``samples`` (``labels`` = 0-based identity per sample) as worker ``ctx.rank``.

    ``initial_state`` (a trained model's weights) starts it from that model, every tensor whose shape fits
    (identity classifiers of another number of identities start afresh); ``distillation`` adds a teacher.

    Every worker sees the same PK epoch permutation and takes its own share of the batches, so
    world_size workers do one epoch's work together. Resumes from ``ctx.restored_state()`` when a
    checkpoint exists (after a worker failure or a re-run of the same run).
    """
    torch.manual_seed(settings.seed)
    model = KPR(config)
    if backbone_weights:
        model.load_backbone_weights(backbone_weights)
    if initial_state is not None:
        _load_fitting(model, initial_state)
    model.to(ctx.device)
    optimizer = _optimizer(model, settings)
    start_epoch, step, spent_s, history = 0, 0, 0.0, []
    state = ctx.restored_state()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, spent_s, history = state["epoch"], state["step"], state["train_s"], state["history"]
    trained = ctx.prepare(model)
    criterion = KPRLoss(config.loss)
    sampler = PKSampler(labels, settings.identities_per_batch, settings.instances_per_identity, seed=settings.seed,
                        rank=ctx.rank, world_size=ctx.world_size)
    total_steps = max(1, settings.epochs * len(sampler))
    warmup = min(1.0, settings.warmup_epochs / max(1, settings.epochs))
    budget_s = settings.max_minutes * 60 if settings.max_minutes else None
    log: dict[str, float] = history[-1]["losses"] if history else {}
    started = time.perf_counter() - spent_s
    last_print = time.perf_counter()

    def throughput(steps: int, seconds: float) -> float:
        """Training samples per second of all workers together."""
        return round(steps * sampler.batch_size * ctx.world_size / max(seconds, 1e-9), 1)

    if ctx.rank == 0:
        where = f"resuming at epoch {start_epoch + 1}, " if state is not None else ""
        print(f"training {config.backbone} at {config.image_size[0]}x{config.image_size[1]} on {len(samples)} crops "
              f"of {len(set(labels))} identities: {where}{len(sampler)} steps/epoch on each of {ctx.world_size} "
              f"worker(s)", file=sys.stderr)
    trained.train()
    stopped = False
    epoch = start_epoch
    for epoch in range(start_epoch, settings.epochs):
        part_warmup = epoch < settings.part_warmup_epochs
        fixbase = epoch < settings.fixbase_epochs
        # Seeded per epoch, so a run resumed from a checkpoint sees the same augmentations as one never stopped.
        rng = np.random.default_rng((settings.seed, ctx.rank, epoch))
        for batch_indices in sampler.epoch(epoch):
            elapsed = time.perf_counter() - started
            if ctx.stop_now(budget_s is not None and elapsed >= budget_s):
                stopped = True
                break
            progress = max(step / total_steps, elapsed / budget_s if budget_s else 0.0)
            _set_lr(optimizer, settings.lr, lr_factor(progress, warmup), fixbase)
            items = [augment(*samples[i].arrays(), rng, augment_config, config.part_grouping) for i in batch_indices]
            items = bipo(items, [samples[i].arrays() for i in batch_indices], [labels[i] for i in batch_indices],
                         rng, augment_config)
            images, prompts, part_labels = make_batch(items, config)
            targets = torch.tensor([labels[i] for i in batch_indices])
            output = trained(images.to(ctx.device), prompts.to(ctx.device))
            if part_warmup and part_labels is not None:
                loss = body_part_attention_loss(output.pixel_logits, part_labels.to(ctx.device),
                                                config.loss.part_attention_label_smoothing)
                log = {"part_attention": float(loss.detach()), "loss": float(loss.detach())}
            else:
                loss, log = criterion(output, targets.to(ctx.device),
                                      None if part_labels is None else part_labels.to(ctx.device))
            if distillation is not None and not part_warmup:
                distilled = distillation.loss(output, batch_indices, ctx.device)
                loss = loss + distilled
                log = {**log, "distill": float(distilled.detach()), "loss": float(loss.detach())}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if stopped:
            break
        train_s = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "train_s": round(train_s, 1), "losses": {k: round(float(v), 4) for k, v in log.items()}})
        metrics = {"epoch": epoch + 1, "step": step, **{k: float(v) for k, v in log.items()}}
        last = epoch + 1 == settings.epochs
        checkpoint = last or (epoch + 1) % settings.checkpoint_every == 0
        state_now = _state(model, optimizer, epoch + 1, step, train_s, history, throughput(step, train_s)) if checkpoint else None
        ctx.report(metrics, state_now)
        if ctx.rank == 0 and (time.perf_counter() - last_print >= REPORT_EVERY_S or last):
            last_print = time.perf_counter()
            print(f"epoch {epoch + 1} ({train_s:.0f} s): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in log.items() if not k.startswith("acc")), file=sys.stderr)
    train_s = time.perf_counter() - started
    if stopped or start_epoch >= settings.epochs:
        # Out of time mid-epoch, or a re-run of a finished run: the final state still becomes the checkpoint.
        ctx.report({"epoch": len(history), "step": step, **{k: float(v) for k, v in log.items()}},
                   _state(model, optimizer, len(history), step, train_s, history, throughput(step, train_s)))
    return LoopResult(model=model.eval(), steps=step, epochs_completed=len(history), train_s=round(train_s, 1),
                      samples_per_s=throughput(step, train_s), last_losses={k: float(v) for k, v in log.items()},
                      history=history)


def _load_fitting(model: KPR, state: dict[str, torch.Tensor]) -> None:
    """Copy into ``model`` every tensor of ``state`` whose name and shape it has."""
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)


def _state(model: KPR, optimizer: torch.optim.Optimizer, epoch: int, step: int, train_s: float,
           history: list[dict], samples_per_s: float) -> dict[str, Any]:
    """The resumable training state (tensors and plain values only, so it loads with weights_only)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
            "train_s": train_s, "history": history, "samples_per_s": samples_per_s}
