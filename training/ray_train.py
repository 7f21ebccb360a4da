"""KPR training on Ray Train: a TorchTrainer runs training/loop.py on ``workers`` DDP workers.

Each worker loads the training crops, takes its rank's share of every PK epoch (PKSampler shards
by rank itself; Ray's distributed sampler is not used, it would split identities) and reports
metrics each epoch. Rank 0 attaches a checkpoint (the project's safetensors model files plus the
optimiser state) every ``checkpoint_every`` epochs to ``storage_path``/``run_name``. A failed
worker restarts the group from the latest checkpoint (FailureConfig), and re-running the same
run name and storage path resumes from it too. Ray is used as already initialised by the caller
(``RAY_ADDRESS`` for a cluster), or started locally by Ray Train.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from kpr_model.config import KPRConfig
from kpr_model.model import KPR
from training.loop import LoopResult, run_loop
from training.train_config import TrainConfig
from training.training_split import TrainingSplit

STATE_FILE = "train_state.pt"


class RaySettings(Protocol):
    """Where a run trains on Ray: the fields of a training or adaptation config that ``fit_on_ray`` reads."""

    workers: int
    use_gpu: bool
    cpus_per_worker: int
    storage_path: str | None
    run_name: str
    max_failures: int


class RayWorkerContext:
    """The loop's context inside a Ray Train worker: rank, DDP, per-epoch report and checkpoint restore."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        # Background and per-part identity heads produce outputs whose loss weight is 0, so they never get a
        # gradient; the set is the same every step, which DDP's static graph mode handles (find_unused_parameters
        # does not: those heads are reachable from the outputs, so DDP waits for their gradients).
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"static_graph": True})

    def stop_now(self, wants_to_stop: bool) -> bool:
        if self.world_size == 1:
            return wants_to_stop
        flag = torch.tensor([1.0 if wants_to_stop else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def report(self, metrics: dict, state: dict | None) -> None:
        if state is None or self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    def restored_state(self) -> dict | None:
        checkpoint = ray.train.get_checkpoint()
        return None if checkpoint is None else read_state(checkpoint)


def read_state(checkpoint: Checkpoint) -> dict:
    """The training state saved in a Ray checkpoint (tensors and plain values: no pickled code runs)."""
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def _worker_loop(loop_config: dict) -> None:
    """What each Ray Train worker runs: the shared loop on its share of the PK batches."""
    cfg = TrainConfig.from_dict(loop_config)
    torch.set_num_threads(cfg.cpus_per_worker)
    split = TrainingSplit.of(cfg)
    config = cfg.model_config(num_classes=split.num_classes)
    samples, labels = split.load(config)
    run_loop(cfg.loop_settings(), config, samples, labels, RayWorkerContext(), cfg.augment, cfg.backbone_weights)


def fit_on_ray(worker_loop: Callable[[dict], None], loop_config: dict, cfg: RaySettings, out: str) -> dict:
    """Run ``worker_loop(loop_config)`` on ``cfg.workers`` Ray Train workers; the training state of its last checkpoint.

    Checkpoints go to ``cfg.storage_path``/``cfg.run_name`` (default kpr_runs/ beside ``out``).
    """
    storage = str(Path(cfg.storage_path or Path(out).resolve().parent / "kpr_runs").resolve())
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run_name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return read_state(trainer.fit().checkpoint)


def result_of(state: dict, config: KPRConfig) -> LoopResult:
    """The LoopResult of a Ray run's final training state: its model rebuilt for ``config`` and its history."""
    model = KPR(config)
    model.load_state_dict(state["model"])
    history = state["history"]
    return LoopResult(model=model.eval(), steps=state["step"], epochs_completed=state["epoch"],
                      train_s=round(state["train_s"], 1), samples_per_s=state["samples_per_s"],
                      last_losses=history[-1]["losses"] if history else {}, history=history)


def train_on_ray(cfg: TrainConfig, num_classes: int) -> LoopResult:
    """Run the TorchTrainer for ``cfg`` and return the final model and its history (from the last checkpoint)."""
    state = fit_on_ray(_worker_loop, asdict(cfg), cfg, cfg.out)
    return result_of(state, cfg.model_config(num_classes=num_classes))
