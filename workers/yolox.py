"""The `yolox` backend: people boxes from a YOLOX ONNX detector (COCO-80, person = class 0).

The model takes float32 [N, 3, S, S] BGR 0..255, letterboxed top-left with pad value 114 (YOLOX's own
preprocessing) and returns [N, A, 85] raw head outputs: box offsets to decode on grids of strides
8, 16 and 32 (xy = (raw + cell) * stride, wh = exp(raw) * stride), objectness and class scores.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from workers.detections import PersonDetection, no_keypoints
from workers.errors import WorkerError
from workers.records import DecodedFrame

STRIDES = (8, 16, 32)
PAD_VALUE = 114
PERSON_CLASS = 0
NMS_IOU = 0.45

log = logging.getLogger(__name__)


def grid_strides(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) cell of each anchor and its stride, in the head's output order, for an S x S input."""
    cells, strides = [], []
    for stride in STRIDES:
        side = size // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full(side * side, stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)[:, None]


def _open_yolox(model_path: str | Path, device: str, threads: int | None):
    """An onnxruntime session of ``model_path``; WorkerError, one line, unless it is a YOLOX detector: one input
    [N, 3, S, S] and an output [N, A, 85] with A the anchors of strides 8, 16 and 32 on S x S (a ReID model, which
    maps an image to one embedding, is refused here)."""
    from kpr_model.onnx_session import OnnxModelError, open_onnx_session  # onnxruntime: on first use

    try:
        session = open_onnx_session(model_path, device, threads)
    except OnnxModelError as exc:
        raise WorkerError(str(exc)) from None
    source, target = session.get_inputs()[0], session.get_outputs()[0]
    size = source.shape[2] if len(source.shape) == 4 else None
    expected = [3, size, size, len(grid_strides(size)[0]) if isinstance(size, int) else None, 85]
    if source.shape[1:] + target.shape[1:] != expected:
        raise WorkerError(f"{model_path}: not a YOLOX detector: input {source.shape}, output {target.shape} where "
                          f"YOLOX takes [N, 3, S, S] and gives [N, anchors, 85] (a ReID model gives an embedding)")
    return session


def check_yolox_file(model_path: str | Path) -> None:
    """WorkerError, one line, unless ``model_path`` is a YOLOX ONNX detector (opened on the CPU, shapes checked), so
    a wrong file shows before any work starts."""
    _open_yolox(model_path, "cpu", 1)


class YoloxDetector:
    """Person boxes (x, y, w, h) and scores from a YOLOX ONNX file, one image at a time or in batches."""

    def __init__(self, model_path: str | Path, device: str = "cpu", min_score: float = 0.3, nms_iou: float = NMS_IOU,
                 threads: int | None = None):
        from kpr_model.onnx_session import cuda_available  # onnxruntime: on first use

        if device.startswith("cuda") and not cuda_available():
            log.warning("onnxruntime has no CUDA provider here: the detector runs on the CPU")
            device = "cpu"
        self.session = _open_yolox(model_path, device, threads)
        model_input = self.session.get_inputs()[0]
        batch, height = model_input.shape[0], model_input.shape[2]
        self.input_name, self.size = model_input.name, height
        self.batch = None if not isinstance(batch, int) else batch  # None: any batch size
        self.cells, self.strides = grid_strides(height)
        self.min_score, self.nms_iou = min_score, nms_iou

    def _letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """An RGB image as the model's BGR [3, S, S] float input, and the scale applied to it."""
        scale = min(self.size / image.shape[0], self.size / image.shape[1])
        height, width = int(image.shape[0] * scale), int(image.shape[1] * scale)
        canvas = np.full((self.size, self.size, 3), PAD_VALUE, np.uint8)
        canvas[:height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
        return canvas.transpose(2, 0, 1).astype(np.float32), scale

    def _people(self, raw: np.ndarray, scale: float, shape: tuple[int, ...]) -> list[tuple[np.ndarray, float]]:
        """Decoded, thresholded, non-max-suppressed person boxes of one image's raw output, in image pixels,
        clipped to the image of ``shape``."""
        scores = raw[:, 4] * raw[:, 5 + PERSON_CLASS]
        keep = scores >= self.min_score
        raw, scores = raw[keep], scores[keep]
        centres = (raw[:, :2] + self.cells[keep]) * self.strides[keep]
        sizes = np.exp(raw[:, 2:4]) * self.strides[keep]
        corners = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) / scale
        corners = np.clip(corners, 0, [shape[1], shape[0], shape[1], shape[0]])
        boxes = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
        inside = np.all(boxes[:, 2:] > 0, axis=1)
        boxes, scores = boxes[inside], scores[inside]
        chosen = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), self.min_score, self.nms_iou)
        return [(boxes[i].astype(np.float32), float(scores[i])) for i in np.asarray(chosen, dtype=np.int64).ravel()]

    def detect_images(self, images: Sequence[np.ndarray]) -> list[list[tuple[np.ndarray, float]]]:
        """(box, score) of each person in each RGB image; the whole list is one batch when the model allows."""
        prepared = [self._letterbox(image) for image in images]
        step = len(prepared) if self.batch is None else self.batch
        out: list[list[tuple[np.ndarray, float]]] = []
        for start in range(0, len(prepared), max(1, step)):
            chunk = prepared[start:start + step]
            tensors = [tensor for tensor, _ in chunk]
            tensors += tensors[-1:] * (step - len(tensors))  # a fixed-batch model gets its last batch filled up
            raw = self.session.run(None, {self.input_name: np.stack(tensors)})[0]
            out += [self._people(r, scale, image.shape)
                    for r, (_, scale), image in zip(raw, chunk, images[start:start + step])]
        return out


class YoloxBackend:
    """Detections without keypoints from YOLOX (a pose model adds them: see workers/backends.py)."""

    name = "yolox"

    def __init__(self, detector: YoloxDetector):
        self.detector = detector

    def detect(self, video_uri: str, frames: Sequence[DecodedFrame]) -> list[list[PersonDetection]]:
        """The people YOLOX finds in each frame, with zero-confidence keypoints."""
        found = self.detector.detect_images([frame.image for frame in frames])
        return [[PersonDetection(box, score, no_keypoints()) for box, score in people] for people in found]
