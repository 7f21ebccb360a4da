"""The `movenet` pose model: COCO-17 keypoints of one person box at a time (top-down), from a MoveNet .tflite.

MoveNet SinglePose takes a uint8 RGB [1, S, S, 3] image and returns [1, 1, 17, 3] = (y, x, score)
normalised to that image. Each box is cut as a square around its centre, enlarged by CROP_SCALE so
the limbs that stick out of a tight box stay in view, padded with black where it leaves the frame.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from workers.detections import PersonDetection, has_keypoints
from workers.errors import WorkerError

CROP_SCALE = 1.25


TFLITE_MAGIC = b"TFL3"  # the FlatBuffer file identifier of a TFLite model, at bytes 4..8


def is_tflite_file(path: str | Path) -> bool:
    """Whether ``path`` starts as a TFLite model does (it says nothing of which model)."""
    with open(path, "rb") as file:
        return file.read(8)[4:] == TFLITE_MAGIC


def _interpreter(model_path: str | Path, num_threads: int | None):
    """A TFLite interpreter of ``model_path``, its tensors not yet allocated; WorkerError, one line, unless the file is
    a MoveNet SinglePose model (a square image in, 17 keypoints x (y, x, score) out)."""
    from ai_edge_litert.interpreter import Interpreter

    if not is_tflite_file(model_path):
        raise WorkerError(f"{model_path}: not a TFLite model; the pose model is a MoveNet SinglePose .tflite "
                          f"(a YOLOX .onnx goes to --detector-model)")
    try:
        interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
    except (ValueError, RuntimeError) as exc:
        raise WorkerError(f"{model_path}: not a loadable tflite model ({str(exc).splitlines()[0][:200]})") from None
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if list(target["shape"][-2:]) != [17, 3] or len(source["shape"]) != 4 or source["shape"][1] != source["shape"][2]:
        raise WorkerError(f"{model_path}: expected a MoveNet SinglePose model (square input, 17 x 3 output), got "
                          f"input {source['shape'].tolist()}, output {target['shape'].tolist()}")
    return interpreter


def check_movenet_file(model_path: str | Path) -> None:
    """WorkerError, one line, unless ``model_path`` is a MoveNet SinglePose .tflite; reads the model's header and
    tensor shapes only, so a wrong file shows before any work starts."""
    _interpreter(model_path, 1)


class MoveNet:
    """Top-down single-person pose estimation with a MoveNet tflite model (ai-edge-litert)."""

    def __init__(self, model_path: str | Path, num_threads: int | None = None):
        self.interpreter = _interpreter(model_path, num_threads)
        try:
            self.interpreter.allocate_tensors()
        except RuntimeError as exc:
            raise WorkerError(f"{model_path}: not a loadable tflite model ({str(exc).splitlines()[0][:200]})") from None
        source, target = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = source["index"], target["index"]
        self.size, self.dtype = int(source["shape"][1]), source["dtype"]

    def estimate(self, image: np.ndarray, bbox: np.ndarray) -> np.ndarray:
        """Keypoints [17, 3] (x, y, score) in ``image`` pixels of the person in ``bbox`` (x, y, w, h) of an RGB image."""
        x, y, w, h = (float(v) for v in bbox)
        side = max(w, h) * CROP_SCALE
        scale = self.size / side
        left, top = x + w / 2 - side / 2, y + h / 2 - side / 2
        warp = np.array([[scale, 0, -left * scale], [0, scale, -top * scale]], np.float32)
        crop = cv2.warpAffine(image, warp, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        self.interpreter.set_tensor(self.input_index, crop[None].astype(self.dtype))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output_index).reshape(17, 3)
        keypoints = np.empty((17, 3), np.float32)
        keypoints[:, 0] = left + raw[:, 1] * side
        keypoints[:, 1] = top + raw[:, 0] * side
        keypoints[:, 2] = np.clip(raw[:, 2], 0.0, 1.0)
        return keypoints

    def add_keypoints(self, image: np.ndarray, detections: list[PersonDetection]) -> list[PersonDetection]:
        """``detections`` of one frame, those without keypoints given MoveNet's (the others returned unchanged)."""
        return [det if has_keypoints(det) else replace(det, keypoints=self.estimate(image, det.bbox)) for det in detections]
