"""KPR (Keypoint Promptable Re-Identification, ECCV 2024) in pure PyTorch: model, prompts, losses, checkpoints.

Public names are imported lazily, so ``import kpr_model.distance`` (storage) does not pull in timm.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "BackboneWeightsNotFoundError": "backbone",
    "PromptableBackbone": "backbone",
    "compute_model_id": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint_files",
    "read_checkpoint_info": "checkpoint_files",
    "read_model_id": "checkpoint_files",
    "KPRConfig": "config",
    "KPRModelError": "config",
    "LossConfig": "config",
    "ReIDEmbeddings": "embeddings",
    "KPREncoder": "encoder",
    "prepare_crops": "encoder",
    "export_checkpoint_onnx": "export",
    "export_onnx": "export",
    "GlobalOnnxEncoder": "global_onnx",
    "COCO_KEYPOINTS": "keypoints",
    "PART_GROUPINGS": "keypoints",
    "PROMPT_GROUPINGS": "keypoints",
    "group_names": "keypoints",
    "KPRLoss": "losses",
    "EMBEDDING_TYPES": "model",
    "KPR": "model",
    "KPRFeatures": "model",
    "KPROutput": "model",
    "OnnxKPREncoder": "onnx_encoder",
    "OnnxModelError": "onnx_session",
    "ModelFacts": "model_facts",
    "model_facts": "model_facts",
    "open_encoder": "model_files",
    "empty_prompt": "prompts",
    "keypoints_to_part_labels": "prompts",
    "keypoints_to_prompt": "prompts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kpr_model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kpr_model.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
