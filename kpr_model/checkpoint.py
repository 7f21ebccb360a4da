"""Project checkpoint format: a directory with ``model.safetensors`` and ``config.json``.

config.json = {"format": "kpr-checkpoint", "version": 1, "model_id": ..., "config": KPRConfig dict,
"metadata": free-form JSON (training metrics, dataset, ...)}. ``model_id`` is the first 16 hex
digits of a sha256 over the canonical config JSON and every tensor (name, dtype, shape, bytes) in
sorted name order, so saving the same weights twice gives the same id. Loading never unpickles.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kpr_model.checkpoint_files import (CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, WEIGHTS_FILE, CheckpointError,
                                        read_checkpoint_info)
from kpr_model.config import KPRConfig
from kpr_model.model import KPR

log = logging.getLogger(__name__)


def compute_model_id(state: dict[str, torch.Tensor], config: KPRConfig) -> str:
    """Stable 16-hex-digit id of a config + weights pair (independent of dict order and device)."""
    digest = hashlib.sha256(_canonical_json(config.to_dict()).encode())
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(
    model: KPR, config: KPRConfig, path: str | Path, metadata: dict[str, Any] | None = None
) -> str:
    """Write ``model``'s weights and ``config`` as a checkpoint directory at ``path``; return its model_id."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    model_id = compute_model_id(state, config)
    document = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_id": model_id,
        "config": config.to_dict(),
        "metadata": metadata or {},
    }
    try:
        text = json.dumps(document, indent=2, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata for {path} is not JSON-serialisable: {exc}") from exc
    path.mkdir(parents=True, exist_ok=True)
    _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"model_id": model_id}))
    _atomic_write(path / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return model_id


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[KPR, KPRConfig, str]:
    """Rebuild the model of a checkpoint directory in eval mode on ``device``; checks weights against model_id."""
    path = Path(path)
    config, model_id, _ = read_checkpoint_info(path)
    try:
        state = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: unreadable {WEIGHTS_FILE}: {exc}") from exc
    if compute_model_id(state, config) != model_id:
        raise CheckpointError(f"checkpoint {path}: weights do not match model_id {model_id} (corrupt or edited)")
    model = KPR(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the config: {exc}".splitlines()[0]) from exc
    if config.camera_embeddings:
        log.info("%s: its camera embedding (%d cameras of %s) is left out of embeddings made without camera ids, "
                 "as the official feature extractor does; an archive's cameras are not the dataset's", path,
                 config.camera_embeddings, config.camera_dataset or "its training dataset")
    return model.to(device).eval(), config, model_id


def _canonical_json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary sibling then rename, so readers never see a half-written file."""
    tmp = target.with_name(target.name + ".tmp")
    write(tmp)
    os.replace(tmp, target)
