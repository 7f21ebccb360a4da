"""What a model file is, read cheaply (no PyTorch): a KPR checkpoint folder, a KPR ``.onnx`` export, a global
person-ReID ``.onnx`` model or a hybrid of a KPR checkpoint and a global model, with the id, kind and shape a store
records of the model that wrote it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kpr_model.checkpoint_files import read_checkpoint_info
from kpr_model.global_onnx import GlobalOnnxEncoder
from kpr_model.hybrid_files import HybridError, check_holistic_weight, hybrid_model_id, is_hybrid, read_hybrid
from kpr_model.onnx_format import ONNX_FORMAT, parse_onnx_metadata
from kpr_model.onnx_session import OnnxModelError, open_onnx_session

KPR_KIND = "kpr"


@dataclass(frozen=True)
class ModelFacts:
    """What a store records of the model that wrote it: its id, kind ("kpr" or "global"), part count K, size D and
    how many times the holistic entry counts among the visible parts in the part distance (a hybrid's setting)."""

    model_id: str
    kind: str
    num_parts: int
    dim: int
    holistic_weight: float = 1.0


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
    if is_hybrid(path):
        if input_coding is not None:
            raise HybridError(f"{path} is a hybrid model: its global model's input coding is set when it is made "
                              "(kpr hybrid --model-input), not when it is used")
        spec = read_hybrid(path)
        return hybrid_facts(spec.kpr, spec.global_model, spec.holistic_weight, spec.input_coding)
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


def hybrid_facts(kpr: str | Path, global_model: str | Path, holistic_weight: float,
                 input_coding: str | None = None) -> ModelFacts:
    """The facts of a hybrid of the KPR checkpoint ``kpr`` and the global ONNX model ``global_model``; HybridError
    when they do not fit together (not a KPR checkpoint and a global model, or embeddings of different sizes)."""
    weight = check_holistic_weight(holistic_weight)
    if is_onnx(kpr) or is_hybrid(kpr):
        raise HybridError(f"{kpr} is not a KPR checkpoint folder: a hybrid takes one for its parts")
    parts = model_facts(kpr)
    if not is_onnx(global_model):
        raise HybridError(f"{global_model} is not an .onnx file: a hybrid takes a global ReID ONNX model")
    whole = model_facts(global_model, input_coding)
    if whole.kind != GlobalOnnxEncoder.kind:
        raise HybridError(f"{global_model} is a KPR export, not a global ReID model")
    if whole.dim != parts.dim:
        raise HybridError(f"{global_model} gives {whole.dim}-d embeddings and {kpr} {parts.dim}-d parts: a hybrid "
                          f"needs one size (adapt KPR from the global model, kpr adapt --model {Path(global_model).name})")
    return ModelFacts(hybrid_model_id(parts.model_id, whole.model_id), KPR_KIND, parts.num_parts, parts.dim, weight)


def trainable_facts(path: str | Path) -> ModelFacts:
    """The facts of a model training can start from: a KPR checkpoint folder or a global ReID ONNX model (KPR is
    built on its trunk). A KPR ``.onnx`` export holds no trainable graph: OnnxModelError saying what to give."""
    if is_hybrid(path):
        raise HybridError(f"{path} is a hybrid model; training starts from its KPR checkpoint, "
                          f"{read_hybrid(path).kpr}")
    facts = model_facts(path)
    if is_onnx(path) and facts.kind == KPR_KIND:
        raise OnnxModelError(f"{path} is a KPR export, which cannot be trained: give the checkpoint folder it was "
                             "exported from, or a global ReID ONNX model")
    return facts
