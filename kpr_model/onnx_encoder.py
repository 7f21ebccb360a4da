"""ONNX Runtime drop-in for ``KPREncoder``: same ``embed`` interface, same preprocessing, no PyTorch model.

The ONNX file comes from ``kpr_model.export`` and carries its ``KPRConfig`` and ``model_id`` as
metadata, so the encoder needs nothing else. Preprocessing is ``kpr_model.encoder.prepare_crops``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.crop_batches import embed_in_batches
from kpr_model.encoder import EncoderShape, prepare_crops
from kpr_model.onnx_format import INPUT_NAMES, OUTPUT_NAMES, parse_onnx_metadata
from kpr_model.onnx_session import OnnxModelError, open_onnx_session


class OnnxKPREncoder(EncoderShape):
    """Embeds person crops with an exported KPR ONNX model through onnxruntime (drop-in for ``KPREncoder``)."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 session: ort.InferenceSession | None = None) -> None:
        """Open ``path`` on ``device`` (or use ``session``, already opened on it)."""
        self.path = Path(path)
        self.session = session or open_onnx_session(self.path, device, threads)
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
