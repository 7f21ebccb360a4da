"""What a model file is, read cheaply (no PyTorch): a KPR checkpoint folder, a KPR ``.onnx`` export or a global
person-ReID ``.onnx`` model, with the id, kind and shape a store records of the model that wrote it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kpr_model.checkpoint_files import read_checkpoint_info
from kpr_model.global_onnx import GlobalOnnxEncoder
from kpr_model.onnx_format import ONNX_FORMAT, parse_onnx_metadata
from kpr_model.onnx_session import OnnxModelError, open_onnx_session

KPR_KIND = "kpr"


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


def is_kpr_export(metadata: dict[str, str]) -> bool:
    """Whether an ONNX file's metadata marks it as a KPR export (kpr_model/export.py) rather than a global model."""
    return metadata.get("kpr_format") == ONNX_FORMAT


def refuse_coding(path: str | Path, input_coding: str | None) -> None:
    """A KPR model codes its own input (its config says how): a given input coding is a mistake."""
    if input_coding is not None:
        raise OnnxModelError(f"{path} is a KPR model, which codes its input itself; the model input coding "
                             "applies to global ReID ONNX models only")


def model_facts(path: str | Path, input_coding: str | None = None) -> ModelFacts:
    """The facts of the model at ``path``: a folder's config.json is read, an ONNX file's graph and metadata;
    no weights are loaded and PyTorch is not imported, so checking a model before work takes well under a second."""
    if not is_onnx(path):
        refuse_coding(path, input_coding)
        config, model_id, _ = read_checkpoint_info(path)
        return ModelFacts(model_id, KPR_KIND, config.num_parts, config.embed_dim)
    session = open_onnx_session(path, "cpu")
    metadata = session.get_modelmeta().custom_metadata_map
    if is_kpr_export(metadata):
        refuse_coding(path, input_coding)
        config, model_id = parse_onnx_metadata(metadata, path)
        return ModelFacts(model_id, KPR_KIND, config.num_parts, config.embed_dim)
    encoder = GlobalOnnxEncoder(path, input_coding=input_coding, session=session)
    return ModelFacts(encoder.model_id, encoder.kind, encoder.num_parts, encoder.dim)


def trainable_facts(path: str | Path) -> ModelFacts:
    """The facts of a model training can start from: a KPR checkpoint folder or a global ReID ONNX model (KPR is
    built on its trunk). A KPR ``.onnx`` export holds no trainable graph: OnnxModelError saying what to give."""
    facts = model_facts(path)
    if is_onnx(path) and facts.kind == KPR_KIND:
        raise OnnxModelError(f"{path} is a KPR export, which cannot be trained: give the checkpoint folder it was "
                             "exported from, or a global ReID ONNX model")
    return facts
