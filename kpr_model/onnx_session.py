"""Opening onnxruntime sessions one way for every ONNX model the project runs: KPR exports, YOLOX, ReID baselines.

No PyTorch here, so the detection workers that run YOLOX do not import it.
"""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from kpr_model.config import KPRModelError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_LOAD_ERRORS = (OSError, ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.InvalidProtobuf,
                ort_state.NoSuchFile, ort_state.NotImplemented, ort_state.RuntimeException)


class OnnxModelError(KPRModelError):
    """An ONNX file is missing, unreadable, or not a model of the kind its caller expects."""


def cuda_available() -> bool:
    """Whether this onnxruntime build can run models on a CUDA GPU."""
    return CUDA_PROVIDER in ort.get_available_providers()


def session_providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime providers for ``device``: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:<i>"."""
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return [CPU_PROVIDER]
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    if not cuda_available():
        raise KPRModelError(f"device {device!r} asked for, but onnxruntime has no CUDA provider "
                            f"(have {ort.get_available_providers()})")
    return [(CUDA_PROVIDER, {"device_id": index or "0"}), CPU_PROVIDER]


def open_onnx_session(path: str | Path, device: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime session of the ONNX file ``path`` on ``device`` (see ``session_providers``).

    ``threads`` caps its compute threads (None: one per core). Idle threads do not spin, so that
    stages sharing the cores do not steal them from each other. OnnxModelError, one line naming
    ``path``, when the file is missing or onnxruntime cannot load it.
    """
    providers = session_providers(device)
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"ONNX model file not found: {path}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except _LOAD_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise OnnxModelError(f"cannot load ONNX model {path}: {reason}") from None
