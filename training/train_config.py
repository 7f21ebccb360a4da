"""What a training run is told: ``TrainConfig`` (every setting, loadable from YAML), its presets and its error.

Shared by the run's driver (training/train.py) and each Ray Train worker (training/ray_train.py),
which rebuilds the config from the plain values the driver sends it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kpr_model.config import KPRConfig
from kpr_model.config_check import checked_values
from training.augment import AugmentConfig
from training.datasets import DatasetError, dataset_spec
from training.loop import LoopSettings

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
