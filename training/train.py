"""KPR training entry point: config, data, the loop in this process or on Ray Train workers, held-out evaluation.

``TrainConfig`` holds every setting (loadable from YAML); ``train`` runs training/loop.py either in
this process (workers=0, what the demo uses) or as a Ray Train TorchTrainer with ``workers`` DDP
workers (training/ray_train.py), then evaluates the final model and saves the project checkpoint.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from kpr_model.checkpoint import save_checkpoint
from kpr_model.config import KPRConfig
from kpr_model.config_check import checked_values
from kpr_model.distance import kpr_distance
from kpr_model.encoder import KPREncoder
from kpr_model.model import KPR
from training.augment import AugmentConfig
from training.evaluation import evaluate_rankings
from training.loop import LoopResult, LoopSettings, run_loop
from training.datasets import DatasetError, dataset_spec, load_dataset
from training.samples import LoadedSample, load_samples

PRESETS = {"tiny": KPRConfig.tiny, "demo": KPRConfig.demo, "default": KPRConfig}


class TrainConfigError(ValueError):
    """A training config that cannot be used: unknown keys, wrong types, impossible values."""


@dataclass
class TrainConfig:
    """What to train on, for how long, how, and where; defaults suit a CPU laptop.

    Schedule (spec section 7): linear warm-up for ``warmup_epochs`` then cosine decay; the
    pretrained backbone is frozen for the first ``fixbase_epochs``. ``workers`` = number of Ray
    Train DDP workers (0 = train in this process, without Ray). Checkpoints of a Ray run go to
    ``storage_path``/``run_name``; re-running the same run resumes from its latest checkpoint.
    """

    data_root: str
    out: str
    dataset: str = "synthetic"
    preset: str = "demo"
    backbone_weights: str | None = None
    epochs: int = 30
    max_minutes: float | None = None
    identities_per_batch: int = 8
    instances_per_identity: int = 4
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 5.0
    fixbase_epochs: int = 0
    seed: int = 1
    threads: int | None = None
    workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: int = 1
    storage_path: str | None = None
    run_name: str = "kpr-train"
    max_failures: int = 2
    checkpoint_every: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        positive = ("epochs", "identities_per_batch", "instances_per_identity", "cpus_per_worker", "checkpoint_every")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        try:
            dataset_spec(self.dataset)
        except DatasetError as exc:
            raise TrainConfigError(str(exc)) from exc
        if self.preset not in PRESETS:
            raise TrainConfigError(f"unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")
        if self.optimizer not in ("adam", "sgd"):
            raise TrainConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        rates = (self.lr, self.weight_decay, self.warmup_epochs)
        if not (all(math.isfinite(v) for v in rates) and self.lr > 0 and self.weight_decay >= 0
                and self.warmup_epochs >= 0 and self.fixbase_epochs >= 0):
            raise TrainConfigError("lr must be finite and > 0; weight_decay, warmup_epochs and fixbase_epochs finite and >= 0")
        if (self.threads is not None and self.threads < 1) or self.seed < 0:
            raise TrainConfigError("threads must be >= 1 (or unset) and seed >= 0")
        if self.workers < 0 or self.max_failures < -1:
            raise TrainConfigError("workers must be >= 0 (0 = no Ray) and max_failures >= -1 (-1 = no limit)")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise TrainConfigError(f"max_minutes must be > 0, got {self.max_minutes!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config from plain values (YAML), refusing unknown keys and wrong types with one clear line."""
        values = checked_values(cls, values, "training config", TrainConfigError)
        try:
            if "augment" in values:
                values["augment"] = AugmentConfig(**(values["augment"] or {}))
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise TrainConfigError(f"bad training config: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """A config from a YAML file, with ``overrides`` (e.g. from the command line) applied on top."""
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise TrainConfigError(f"cannot read training config {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise TrainConfigError(f"training config {path} is not UTF-8 text") from exc
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            # ValueError: well-formed YAML with an impossible value (a date such as 2001-02-30).
            raise TrainConfigError(f"training config {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise TrainConfigError(f"training config {path} must be a mapping of settings")
        return cls.from_dict({**loaded, **(overrides or {})})

    def model_config(self, num_classes: int) -> KPRConfig:
        return PRESETS[self.preset](num_classes=num_classes)

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(**{f: getattr(self, f) for f in LoopSettings.__dataclass_fields__})


def training_identities(cfg: TrainConfig) -> dict[int, int]:
    """Dataset pid -> 0-based label of the training split, refusing a split too small for the batches asked for."""
    pids = sorted({sample.pid for sample in load_dataset(cfg.dataset, cfg.data_root, "train")})
    needed = min(cfg.identities_per_batch, len(pids)) * max(1, cfg.workers)
    if len(pids) < 2 or len(pids) < needed:
        raise TrainConfigError(
            f"{len(pids)} training identities cannot fill one batch of {cfg.identities_per_batch} identities on each "
            f"of {max(1, cfg.workers)} worker(s): lower identities_per_batch or workers"
        )
    return {pid: i for i, pid in enumerate(pids)}


def training_data(cfg: TrainConfig) -> tuple[list[LoadedSample], list[int]]:
    """The training crops in memory and their 0-based identity labels."""
    pid_map = training_identities(cfg)
    samples = load_samples(load_dataset(cfg.dataset, cfg.data_root, "train"))
    return samples, [pid_map[s.pid] for s in samples]


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


def evaluate(model: KPR, config: KPRConfig, query: list[LoadedSample], gallery: list[LoadedSample],
             drop_same_camera: bool = True) -> dict:
    """mAP / CMC / mINP of ``model`` on a query/gallery split, with prompts, using the product's part distance.

    ``drop_same_camera``: the Market-1501 rule (False for datasets whose protocol keeps them).
    """
    encoder = KPREncoder(model, config)

    def embed(items: list[LoadedSample]):
        return encoder.embed([s.image for s in items], [s.keypoints for s in items], [s.negatives for s in items])

    distances = kpr_distance(embed(query), embed(gallery))
    metrics = evaluate_rankings(distances, np.array([s.pid for s in query]), np.array([s.pid for s in gallery]),
                                np.array([s.camid for s in query]), np.array([s.camid for s in gallery]),
                                drop_same_camera=drop_same_camera)
    return metrics.as_dict()


def train(cfg: TrainConfig) -> dict:
    """Train (here or on Ray Train workers), evaluate on the held-out query/gallery split, save the checkpoint."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.workers:
        from training.ray_train import train_on_ray

        result = train_on_ray(cfg, num_classes=len(training_identities(cfg)))
    else:
        samples, labels = training_data(cfg)
        config = cfg.model_config(num_classes=len(set(labels)))
        result = run_loop(cfg.loop_settings(), config, samples, labels, LocalContext(), cfg.augment, cfg.backbone_weights)
    return finish(cfg, result)


def finish(cfg: TrainConfig, result: LoopResult) -> dict:
    """Evaluate the trained model on the held-out split and save it as the project checkpoint at ``cfg.out``."""
    model = result.model.eval()
    metrics = evaluate(model, model.config, load_samples(load_dataset(cfg.dataset, cfg.data_root, "query")),
                       load_samples(load_dataset(cfg.dataset, cfg.data_root, "gallery")),
                       drop_same_camera=dataset_spec(cfg.dataset).drop_same_camera)
    summary = {"steps": result.steps, "epochs_completed": result.epochs_completed, "train_s": result.train_s,
               "samples_per_s": result.samples_per_s, "workers": cfg.workers, "heldout": metrics,
               "last_losses": result.last_losses, "history": result.history,
               "train_config": {k: v for k, v in asdict(cfg).items() if k != "augment"}}
    summary["model_id"] = save_checkpoint(model, model.config, cfg.out, metadata={"training": summary})
    summary["checkpoint"] = cfg.out
    print(f"held-out mAP {metrics['map']:.3f}, rank-1 {metrics['rank1']:.3f}; checkpoint {cfg.out}", file=sys.stderr)
    return summary
