"""Intel Open Model Zoo person-ReID models (person-reidentification-retail-0248, -0287) as an outside baseline.

They are global-embedding models: input float32 [1, H, W, 3] NHWC, BGR 0..255 without normalisation
(256x128 for both), output one embedding per crop, compared by cosine similarity.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from kpr_model.onnx_session import OnnxModelError, open_onnx_session


class OmzReIDModel:
    """An Open Model Zoo ReID ONNX model: RGB person crops -> L2-normalised global embeddings [N, D]."""

    def __init__(self, path: str | Path, threads: int | None = None, device: str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelError(f"ReID baseline model not found: {self.path} (expected a global person-ReID ONNX file "
                                 "such as Intel Open Model Zoo's person-reidentification-retail-0248, converted to "
                                 "ONNX by the PINTO model zoo)")
        self.session = open_onnx_session(self.path, device, threads)
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 4 or shape[3] != 3 or not all(isinstance(v, int) for v in shape[1:3]):
            raise OnnxModelError(f"{self.path} is not an NHWC image model with one input (inputs: "
                                 f"{[(i.name, i.shape) for i in inputs]})")
        self.input_name = inputs[0].name
        self.size = (int(shape[1]), int(shape[2]))
        self.dim = int(np.prod([v for v in self.session.get_outputs()[0].shape[1:] if isinstance(v, int)]))

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings [N, D] of HxWx3 uint8 RGB crops, one crop per run (the graphs have batch 1)."""
        rows = []
        for crop in crops:
            bgr = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR)
            pixels = cv2.resize(bgr, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
            output = self.session.run(None, {self.input_name: pixels[None].astype(np.float32)})[0]
            rows.append(np.asarray(output, np.float32).reshape(-1))
        embeddings = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
