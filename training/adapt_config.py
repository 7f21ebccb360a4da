"""What an adaptation run is told: ``AdaptConfig``, the settings of fine-tuning a KPR checkpoint on an archive's crops.

Shared by the run's driver (training/adapt.py) and each Ray Train worker, which rebuilds it from plain values.
The defaults are the recipe measured best on real video (README: Adapting to your archive).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kpr_model.config_check import checked_values
from training.augment import AugmentConfig
from training.loop import LoopSettings
from training.train_config import TrainConfigError


@dataclass
class AdaptConfig:
    """Fine-tune checkpoint ``model`` on the samples file ``samples`` (training/adapt_samples.py) into ``out``.

    ``part_masks``: train the part classifier on keypoint pseudo-masks; ``distill_weight``: weight of the
    relational loss to the teacher embeddings of the samples file (when it holds any). ``workers`` = Ray
    Train DDP workers (0 = in this process), checkpoints under ``storage_path``/``run_name`` as in training.
    """

    samples: str
    model: str
    out: str
    epochs: int = 60
    max_minutes: float | None = 8.0
    identities_per_batch: int = 8
    instances_per_identity: int = 4
    optimizer: str = "adam"
    lr: float = 3e-4
    weight_decay: float = 5e-4
    warmup_epochs: float = 2.0
    fixbase_epochs: int = 0
    seed: int = 1
    part_masks: bool = True
    distill_weight: float = 1.0
    threads: int | None = None
    workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: int = 1
    storage_path: str | None = None
    run_name: str = "kpr-adapt"
    max_failures: int = 2
    checkpoint_every: int = 5
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "identities_per_batch", "instances_per_identity", "cpus_per_worker", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.distill_weight) and self.distill_weight >= 0):
            raise TrainConfigError("lr must be finite and > 0, distill_weight finite and >= 0")
        if self.workers < 0 or (self.max_minutes is not None and not self.max_minutes > 0):
            raise TrainConfigError("workers must be >= 0 (0 = no Ray) and max_minutes > 0 (or unset)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AdaptConfig":
        """A config from plain values, refusing unknown keys and wrong types with one clear line."""
        values = checked_values(cls, values, "adaptation config", TrainConfigError)
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(**{f: getattr(self, f) for f in LoopSettings.__dataclass_fields__})
