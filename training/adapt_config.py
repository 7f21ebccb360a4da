"""What an adaptation run is told: ``AdaptConfig``, the settings of fine-tuning a KPR checkpoint on an archive's crops.

Shared by the run's driver (training/adapt.py) and each Ray Train worker, which rebuilds it from plain values.
The defaults are the recipe measured best on real video (README: Adapting to your archive).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kpr_model.config_check import checked_values
from kpr_model.model_facts import is_onnx
from training.augment import AugmentConfig
from training.run_settings import RunSettings, TrainConfigError


@dataclass(kw_only=True)
class AdaptConfig(RunSettings):
    """Fine-tune checkpoint ``model`` on the samples file ``samples`` (training/adapt_samples.py) into ``out``.

    ``part_masks``: train the part classifier on keypoint pseudo-masks; ``distill_weight``: weight of the
    relational loss to the teacher embeddings of the samples file (when it holds any). How and where it
    runs are RunSettings, with the adaptation recipe's own defaults for the schedule. ``part_warmup_epochs``
    left unset is a third of the epochs (at least 1) when ``model`` is a global ONNX model, whose KPR starts with
    a fresh part classifier, else 0.
    """

    samples: str
    model: str
    out: str
    part_masks: bool = True
    distill_weight: float = 1.0
    epochs: int = 60
    max_minutes: float | None = 8.0
    lr: float = 3e-4
    warmup_epochs: float = 2.0
    run_name: str = "kpr-adapt"
    checkpoint_every: int = 5
    part_warmup_epochs: int | None = None

    def __post_init__(self) -> None:
        """TrainConfigError with one line for a setting no run can use or a distillation weight below 0."""
        if self.part_warmup_epochs is None:
            self.part_warmup_epochs = max(1, self.epochs // 3) if is_onnx(self.model) else 0
        super().__post_init__()
        if not (math.isfinite(self.distill_weight) and self.distill_weight >= 0):
            raise TrainConfigError(f"distill_weight must be finite and >= 0, got {self.distill_weight!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AdaptConfig":
        """A config from plain values, refusing unknown keys and wrong types with one clear line."""
        values = checked_values(cls, values, "adaptation config", TrainConfigError)
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)
