"""The KPR ONNX file format: its graph's input and output names and its metadata, read without PyTorch.

kpr_model/export.py writes such files (its docstring describes the graph); the metadata (``kpr_format``,
``kpr_format_version``, ``model_id``, ``kpr_config``) is read here, so that telling a KPR export from other
ONNX files and reading its id is cheap.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from kpr_model.config import KPRConfig
from kpr_model.onnx_session import OnnxModelError

ONNX_FORMAT = "kpr-onnx"
ONNX_FORMAT_VERSION = 1
INPUT_NAMES = ("images", "prompts")
OUTPUT_NAMES = ("global_emb", "parts", "visibility")


def parse_onnx_metadata(metadata: Mapping[str, str], path: str | Path) -> tuple[KPRConfig, str]:
    """(config, model_id) from the metadata of a KPR ONNX file; OnnxModelError naming ``path`` otherwise."""
    if metadata.get("kpr_format") != ONNX_FORMAT:
        raise OnnxModelError(f"{path} is not a KPR ONNX export (no kpr_format={ONNX_FORMAT!r} metadata)")
    version = metadata.get("kpr_format_version")
    if version != str(ONNX_FORMAT_VERSION):
        raise OnnxModelError(f"{path}: unsupported kpr_format_version {version!r} (expected {ONNX_FORMAT_VERSION})")
    try:
        config = KPRConfig.from_dict(json.loads(metadata["kpr_config"]))
        return config, metadata["model_id"]
    except (KeyError, ValueError, TypeError) as exc:
        raise OnnxModelError(f"{path}: invalid KPR metadata: {exc}") from exc
