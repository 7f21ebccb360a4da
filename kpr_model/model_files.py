"""Any model file the product accepts: a checkpoint folder (PyTorch) or an exported ``.onnx`` file (onnxruntime)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from kpr_model.checkpoint import read_model_id
from kpr_model.encoder import KPREncoder
from kpr_model.onnx_encoder import OnnxKPREncoder

Encoder = Union[KPREncoder, OnnxKPREncoder]


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` names an exported ONNX model rather than a checkpoint folder."""
    return Path(path).suffix.lower() == ".onnx"


def open_encoder(path: str | Path, device: str = "cpu") -> Encoder:
    """The encoder for ``path``: onnxruntime for ``.onnx`` files, PyTorch for checkpoint folders."""
    return OnnxKPREncoder(path, device=device) if is_onnx(path) else KPREncoder.from_checkpoint(path, device=device)


def model_id_of(path: str | Path) -> str:
    """The model_id of a checkpoint folder or ONNX file (cheap for folders; ONNX files are opened)."""
    return OnnxKPREncoder(path, device="cpu").model_id if is_onnx(path) else read_model_id(path)
