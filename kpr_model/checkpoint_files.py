"""The files of a checkpoint folder and reading what it says without loading its weights (no PyTorch needed).

A checkpoint folder holds ``model.safetensors`` and ``config.json`` (kpr_model/checkpoint.py writes and loads
them); its config and ``model_id`` are read here, so that checking a model before work starts is cheap.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kpr_model.config import KPRConfig, KPRConfigError, KPRModelError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "kpr-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(KPRModelError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


def read_checkpoint_info(path: str | Path) -> tuple[KPRConfig, str, dict[str, Any]]:
    """(config, model_id, metadata) of a checkpoint directory, without loading the weights."""
    path = Path(path)
    _require_files(path)
    try:
        document = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise CheckpointError(f"checkpoint {path}: unreadable {CONFIG_FILE}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("model_id"), str):
        raise CheckpointError(f"checkpoint {path}: invalid {CONFIG_FILE}: expected an object with a model_id string")
    metadata = document.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path}: invalid {CONFIG_FILE}: metadata must be an object")
    try:
        config = KPRConfig.from_dict(document.get("config"))
    except KPRConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: invalid {CONFIG_FILE}: {exc}") from exc
    return config, document["model_id"], metadata


def read_model_id(path: str | Path) -> str:
    """model_id of a checkpoint directory (cheap: reads config.json only)."""
    return read_checkpoint_info(path)[1]


def _require_files(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
