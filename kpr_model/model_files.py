"""The encoder of any model file the product accepts: a KPR checkpoint folder (PyTorch), a KPR ``.onnx`` export,
a global person-ReID ``.onnx`` model (onnxruntime), or a hybrid folder of a KPR checkpoint and a global model, told
apart by the file itself (kpr_model/model_facts.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from kpr_model.encoder import KPREncoder
from kpr_model.fast_inference import FastKPREncoder
from kpr_model.global_onnx import GlobalOnnxEncoder
from kpr_model.hybrid_encoder import HybridEncoder
from kpr_model.hybrid_files import is_hybrid, read_hybrid
from kpr_model.model_facts import is_kpr_export, is_onnx, model_facts, refuse_coding
from kpr_model.onnx_encoder import OnnxKPREncoder
from kpr_model.onnx_session import open_onnx_session

Encoder = Union[KPREncoder, OnnxKPREncoder, GlobalOnnxEncoder, HybridEncoder]


def open_encoder(path: str | Path, device: str = "cpu", input_coding: str | None = None) -> Encoder:
    """The encoder for ``path``: PyTorch for checkpoint folders (the optimised bf16, compiled path on CUDA), onnxruntime
    for ``.onnx`` files (a KPR export when the file carries KPR metadata, else a global ReID model, whose pixel
    coding ``input_coding`` may set; a hybrid's is in its folder)."""
    if is_hybrid(path):
        facts = model_facts(path, input_coding)  # refuses an input coding, checks that the two models fit
        spec = read_hybrid(path)
        whole = GlobalOnnxEncoder(spec.global_model, device=device, input_coding=spec.input_coding)
        return HybridEncoder(open_encoder(spec.kpr, device), whole, facts.model_id, facts.holistic_weight)
    if not is_onnx(path):
        refuse_coding(path, input_coding)
        encoder = FastKPREncoder if str(device).startswith("cuda") else KPREncoder
        return encoder.from_checkpoint(path, device=device)
    session = open_onnx_session(path, device)
    if is_kpr_export(session.get_modelmeta().custom_metadata_map):
        refuse_coding(path, input_coding)
        return OnnxKPREncoder(path, session=session)
    return GlobalOnnxEncoder(path, input_coding=input_coding, session=session)
