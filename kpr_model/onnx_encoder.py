"""ONNX Runtime drop-in for ``KPREncoder``: same ``embed`` interface, same preprocessing, no PyTorch model.

The ONNX file comes from ``kpr_model.export`` and carries its ``KPRConfig`` and ``model_id`` as
metadata, so the encoder needs nothing else. Preprocessing is ``kpr_model.encoder.prepare_crops``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from kpr_model.config import KPRModelError
from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.encoder import EncoderShape, embed_in_batches, prepare_crops
from kpr_model.export import INPUT_NAMES, OUTPUT_NAMES, OnnxModelError, parse_onnx_metadata

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_LOAD_ERRORS = (
    OSError,
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.RuntimeException,
)


def session_providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime providers for ``device``: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:<i>"."""
    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if CUDA_PROVIDER in available else "cpu"
    if device == "cpu":
        return [CPU_PROVIDER]
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    if CUDA_PROVIDER not in available:
        raise KPRModelError(f"device {device!r} asked for, but onnxruntime has no CUDA provider (have {available})")
    return [(CUDA_PROVIDER, {"device_id": index or "0"}), CPU_PROVIDER]


class OnnxKPREncoder(EncoderShape):
    """Embeds person crops with an exported KPR ONNX model through onnxruntime (drop-in for ``KPREncoder``)."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        providers = session_providers(device)
        if not self.path.is_file():
            raise OnnxModelError(f"ONNX model file not found: {self.path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except _LOAD_ERRORS as exc:
            raise OnnxModelError(f"cannot load ONNX model {self.path}: {exc}") from exc
        self.config, self.model_id = parse_onnx_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if inputs != INPUT_NAMES or outputs != OUTPUT_NAMES:
            raise OnnxModelError(
                f"{self.path}: graph maps {inputs} -> {outputs}, expected {INPUT_NAMES} -> {OUTPUT_NAMES}"
            )

    @property
    def providers(self) -> list[str]:
        """onnxruntime execution providers in use, in priority order."""
        return self.session.get_providers()

    def embed(
        self,
        crops: Sequence[np.ndarray],
        keypoints: Sequence[np.ndarray | None] | None = None,
        negative_keypoints: Sequence[np.ndarray | None] | None = None,
        batch_size: int = 64,
    ) -> ReIDEmbeddings:
        """Embeddings of HxWx3 uint8 RGB crops, optionally prompted by per-crop target and negative keypoints."""
        return embed_in_batches(crops, keypoints, negative_keypoints, batch_size, self._embed_batch,
                                self.num_parts, self.dim)

    def _embed_batch(self, crops: Sequence[np.ndarray], keypoints: Sequence[np.ndarray | None] | None,
                     negative_keypoints: Sequence[np.ndarray | None] | None) -> ReIDEmbeddings:
        images, prompts = prepare_crops(crops, keypoints, negative_keypoints, self.config)
        feeds = {INPUT_NAMES[0]: images.numpy(), INPUT_NAMES[1]: prompts.numpy()}
        holistic, parts, visibility = self.session.run(list(OUTPUT_NAMES), feeds)
        return ReIDEmbeddings(holistic.astype(np.float32), parts.astype(np.float32), visibility.astype(np.float32))
