"""``RunSettings``: how any KPR training run optimises and where it runs, shared by training from scratch
(``TrainConfig``) and archive adaptation (``AdaptConfig``), with their one error type.

Schedule (spec section 7): linear warm-up for ``warmup_epochs`` then cosine decay; the pretrained
backbone is frozen for the first ``fixbase_epochs``. The first ``part_warmup_epochs`` train the part classifier
alone, on the body-part attention loss, with the backbone frozen: a fresh part classifier (KPR on a global
model's trunk) otherwise stays near uniform on a small archive, swayed by the identity losses that flow through
its pooling masks. ``workers`` = number of Ray Train DDP workers
(0 = train in this process, without Ray). Checkpoints of a Ray run go to ``storage_path``/``run_name``;
re-running the same run resumes from its latest checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from training.augment import AugmentConfig
from training.loop import LoopSettings


class TrainConfigError(ValueError):
    """A training or adaptation config that cannot be used: unknown keys, wrong types, impossible values."""


@dataclass(kw_only=True)
class RunSettings:
    """The optimisation, schedule, sampling and execution settings of a run; checked when made."""

    epochs: int = 30
    max_minutes: float | None = None
    identities_per_batch: int = 8
    instances_per_identity: int = 4
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 5.0
    fixbase_epochs: int = 0
    part_warmup_epochs: int = 0
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
        """TrainConfigError with one line for a value no run can use."""
        positive = ("epochs", "identities_per_batch", "instances_per_identity", "cpus_per_worker", "checkpoint_every")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise TrainConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        rates = (self.lr, self.weight_decay, self.warmup_epochs)
        if not (all(math.isfinite(v) for v in rates) and self.lr > 0 and self.weight_decay >= 0
                and self.warmup_epochs >= 0 and self.fixbase_epochs >= 0 and self.part_warmup_epochs >= 0):
            raise TrainConfigError("lr must be finite and > 0; weight_decay, warmup_epochs, fixbase_epochs and "
                                   "part_warmup_epochs finite and >= 0")
        if (self.threads is not None and self.threads < 1) or self.seed < 0:
            raise TrainConfigError("threads must be >= 1 (or unset) and seed >= 0")
        if self.workers < 0 or self.max_failures < -1:
            raise TrainConfigError("workers must be >= 0 (0 = no Ray) and max_failures >= -1 (-1 = no limit)")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise TrainConfigError(f"max_minutes must be > 0, got {self.max_minutes!r}")

    def loop_settings(self) -> LoopSettings:
        """The settings the training loop itself needs."""
        return LoopSettings(**{f: getattr(self, f) for f in LoopSettings.__dataclass_fields__})
