"""What a training run is told: ``TrainConfig`` (every setting, loadable from YAML) and its model presets.

Shared by the run's driver (training/train.py) and each Ray Train worker (training/ray_train.py),
which rebuilds the config from the plain values the driver sends it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kpr_model.config import KPRConfig
from kpr_model.config_check import checked_values
from training.augment import AugmentConfig
from training.datasets import DatasetError, dataset_spec
from training.run_settings import RunSettings, TrainConfigError

PRESETS = {"tiny": KPRConfig.tiny, "demo": KPRConfig.demo, "default": KPRConfig}


@dataclass(kw_only=True)
class TrainConfig(RunSettings):
    """What to train on and which model, besides how and where (RunSettings); defaults suit a CPU laptop."""

    data_root: str
    out: str
    dataset: str = "synthetic"
    preset: str = "demo"
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        """TrainConfigError with one line for an unknown dataset or preset, or a setting no run can use."""
        super().__post_init__()
        try:
            dataset_spec(self.dataset)
        except DatasetError as exc:
            raise TrainConfigError(str(exc)) from exc
        if self.preset not in PRESETS:
            raise TrainConfigError(f"unknown preset {self.preset!r} (known: {', '.join(PRESETS)})")

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
