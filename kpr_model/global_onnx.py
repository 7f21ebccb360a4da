"""Global person-ReID ONNX models (one embedding per crop, compared by cosine) as encoders of the product.

Such a model (e.g. Intel Open Model Zoo's person-reidentification-retail-0248 and -0287, converted
to ONNX) has one image input and one embedding output. What the file says is read from it: the
layout (NHWC or NCHW, from where the 3 channels are), the input size, a fixed batch size (the OMZ
graphs take 1 crop per run; a free batch axis runs whole batches). How pixels are coded, which the
graph cannot tell, comes from the ONNX metadata key ``reid_input`` when the file has it, else from
the caller, else the Open Model Zoo convention (BGR, 0..255).

The encoder answers as KPR encoders do, with ``ReIDEmbeddings`` of K = 1 part: the part is the
global embedding with visibility 1, so the KPR part distance of two crops is the euclidean distance
of their unit global vectors, sqrt(2 * cosine distance): rankings by either are the same.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.crop_batches import check_crop, embed_in_batches
from kpr_model.onnx_session import OnnxModelError, open_onnx_session

log = logging.getLogger(__name__)

GLOBAL_KIND = "global"
INPUT_METADATA_KEY = "reid_input"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputCoding:
    """How a model wants its pixels: colour order and value = (pixel * scale - mean) / std per channel."""

    bgr: bool
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


INPUT_CODINGS = {
    "bgr255": InputCoding(bgr=True),
    "rgb255": InputCoding(bgr=False),
    "rgb01": InputCoding(bgr=False, scale=1 / 255),
    "imagenet": InputCoding(bgr=False, scale=1 / 255, mean=_IMAGENET_MEAN, std=_IMAGENET_STD),
}
DEFAULT_INPUT = "bgr255"


def check_input_coding(name: str, where: str) -> str:
    """``name`` when it is one of INPUT_CODINGS; OnnxModelError saying ``where`` it came from otherwise."""
    if name not in INPUT_CODINGS:
        raise OnnxModelError(f"{where}: unknown input coding {name!r}; known: {', '.join(INPUT_CODINGS)}")
    return name


@dataclass(frozen=True)
class _Graph:
    """What the graph of a global ReID model says about its input and output."""

    input_name: str
    channels_last: bool
    size: tuple[int, int]
    batch: int | None
    dim: int


def _read_graph(session: ort.InferenceSession, path: Path) -> _Graph:
    """The input layout, size, fixed batch and embedding size of a one-image-in, one-embedding-out graph."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    described = f"inputs {[(i.name, i.shape) for i in inputs]}, outputs {[(o.name, o.shape) for o in outputs]}"
    refusal = f"{path} is neither a KPR export nor a global person-ReID model (one image in, one embedding out): {described}"
    if len(inputs) != 1 or len(outputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        raise OnnxModelError(refusal)
    shape = inputs[0].shape
    channels_last = shape[3] == 3
    if not channels_last and shape[1] != 3:
        raise OnnxModelError(refusal)
    height, width = shape[1:3] if channels_last else shape[2:4]
    out_dims = outputs[0].shape[1:]
    if not all(isinstance(v, int) for v in (height, width, *out_dims)) or sum(v > 1 for v in out_dims) != 1:
        raise OnnxModelError(refusal)
    batch = shape[0] if isinstance(shape[0], int) else None
    return _Graph(inputs[0].name, channels_last, (int(height), int(width)), batch, int(np.prod(out_dims)))


def _model_id(path: Path, input_coding: str) -> str:
    """16 hex digits of the sha256 of the file's bytes and the input coding: one id per file and coding."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    digest.update(f"\0{input_coding}".encode())
    return digest.hexdigest()[:16]


class GlobalOnnxEncoder:
    """Embeds person crops with a global ReID ONNX model (drop-in for ``KPREncoder``, with K = 1 part)."""

    kind = GLOBAL_KIND
    num_parts = 1

    def __init__(self, path: str | Path, device: str = "cpu", input_coding: str | None = None,
                 threads: int | None = None, session: ort.InferenceSession | None = None) -> None:
        """Open ``path`` (or use ``session``, already opened on it); ``input_coding`` overrides the file's metadata."""
        self.path = Path(path)
        self.session = session or open_onnx_session(self.path, device, threads)
        self.graph = _read_graph(self.session, self.path)
        recorded = self.session.get_modelmeta().custom_metadata_map.get(INPUT_METADATA_KEY)
        if input_coding is not None:
            self.input_coding = check_input_coding(input_coding, "model input")
        elif recorded is not None:
            self.input_coding = check_input_coding(recorded, f"{self.path} metadata {INPUT_METADATA_KEY}")
        else:
            self.input_coding = DEFAULT_INPUT
            log.info("%s records no input coding: feeding it BGR pixels 0..255 (Open Model Zoo's); "
                     "give the model input coding if it wants another", self.path.name)
        self.model_id = _model_id(self.path, self.input_coding)

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return self.graph.dim

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
        """Embeddings of HxWx3 uint8 RGB crops; keypoints are checked for length and otherwise unused (no prompts)."""
        runs = min(batch_size, self.graph.batch or batch_size)
        return embed_in_batches(crops, keypoints, negative_keypoints, runs, self._embed_batch, 1, self.dim)

    def vectors(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised global embeddings [N, D] of RGB crops (what a benchmark baseline ranks by, cosine)."""
        return self.embed(crops).global_emb

    def pixels(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The graph's input for ``crops``: resized (bilinear, as OpenCV), coded and laid out as the model wants."""
        coding = INPUT_CODINGS[self.input_coding]
        height, width = self.graph.size
        rows = []
        for crop in crops:
            check_crop(crop)
            resized = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LINEAR)
            rows.append(resized[..., ::-1] if coding.bgr else resized)
        batch = np.stack(rows).astype(np.float32) * np.float32(coding.scale)
        batch = (batch - np.asarray(coding.mean, np.float32)) / np.asarray(coding.std, np.float32)
        return np.ascontiguousarray(batch if self.graph.channels_last else batch.transpose(0, 3, 1, 2))

    def _embed_batch(self, crops: Sequence[np.ndarray], keypoints: Sequence[np.ndarray | None] | None,
                     negative_keypoints: Sequence[np.ndarray | None] | None) -> ReIDEmbeddings:
        output = self.session.run(None, {self.graph.input_name: self.pixels(crops)})[0]
        vectors = np.asarray(output, np.float32).reshape(len(crops), self.dim)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return ReIDEmbeddings(vectors, vectors[:, None, :].copy(), np.ones((len(crops), 1), np.float32))
