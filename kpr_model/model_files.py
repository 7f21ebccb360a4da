"""Any model file the product accepts: a KPR checkpoint folder (PyTorch), a KPR ``.onnx`` export, or a global
person-ReID ``.onnx`` model (onnxruntime), told apart by the file itself."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from kpr_model.checkpoint import read_checkpoint_info
from kpr_model.encoder import KPR_KIND, KPREncoder
from kpr_model.export import ONNX_FORMAT
from kpr_model.global_onnx import GlobalOnnxEncoder
from kpr_model.onnx_encoder import OnnxKPREncoder
from kpr_model.onnx_session import OnnxModelError, open_onnx_session

Encoder = Union[KPREncoder, OnnxKPREncoder, GlobalOnnxEncoder]


@dataclass(frozen=True)
class ModelFacts:
    """What a store records of the model that wrote it: its id, kind ("kpr" or "global"), part count K and size D."""

    model_id: str
    kind: str
    num_parts: int
    dim: int


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX model file rather than a checkpoint folder."""
    return Path(path).suffix.lower() == ".onnx"


def _refuse_coding(path: str | Path, input_coding: str | None) -> None:
    """A KPR model codes its own input (its config says how): a given input coding is a mistake."""
    if input_coding is not None:
        raise OnnxModelError(f"{path} is a KPR model, which codes its input itself; the model input coding "
                             "applies to global ReID ONNX models only")


def open_encoder(path: str | Path, device: str = "cpu", input_coding: str | None = None) -> Encoder:
    """The encoder for ``path``: PyTorch for checkpoint folders, onnxruntime for ``.onnx`` files (a KPR export when
    the file carries KPR metadata, else a global ReID model, whose pixel coding ``input_coding`` may set)."""
    if not is_onnx(path):
        _refuse_coding(path, input_coding)
        return KPREncoder.from_checkpoint(path, device=device)
    session = open_onnx_session(path, device)
    if session.get_modelmeta().custom_metadata_map.get("kpr_format") == ONNX_FORMAT:
        _refuse_coding(path, input_coding)
        return OnnxKPREncoder(path, session=session)
    return GlobalOnnxEncoder(path, input_coding=input_coding, session=session)


def model_facts(path: str | Path, input_coding: str | None = None) -> ModelFacts:
    """The facts of the model at ``path`` (cheap for folders, which are not loaded; ONNX files are opened)."""
    if not is_onnx(path):
        _refuse_coding(path, input_coding)
        config, model_id, _ = read_checkpoint_info(path)
        return ModelFacts(model_id, KPR_KIND, config.num_parts, config.embed_dim)
    encoder = open_encoder(path, "cpu", input_coding)
    return ModelFacts(encoder.model_id, encoder.kind, encoder.num_parts, encoder.dim)
