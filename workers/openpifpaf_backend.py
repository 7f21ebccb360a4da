"""The `openpifpaf` backend: joint person detection + COCO-17 pose with an OpenPifPaf checkpoint (optional extra).

OpenPifPaf is not a dependency: scripts/install_openpifpaf.sh installs it where it builds (see README).
Its checkpoints are pickled whole models, so loading one runs ``torch.load(weights_only=False)``, which
can execute code from the file: this backend only ever loads the local file the user names, never
downloads one; pass only checkpoints from a source you trust.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workers.detections import PersonDetection
from workers.errors import WorkerError
from workers.records import DecodedFrame

INSTALL_HINT = "openpifpaf is not installed: run scripts/install_openpifpaf.sh (see README)"
PAD_MULTIPLE = 16

log = logging.getLogger(__name__)


def import_openpifpaf() -> Any:
    """The openpifpaf module, or WorkerError saying how to install it."""
    try:
        import openpifpaf
    except ImportError:
        raise WorkerError(INSTALL_HINT) from None
    return openpifpaf


def check_checkpoint(path: str | Path | None) -> Path:
    """``path`` as an existing file, or WorkerError saying what is missing."""
    if not path:
        raise WorkerError("the openpifpaf backend needs --openpifpaf-checkpoint: a local OpenPifPaf checkpoint file")
    if not Path(path).is_file():
        raise WorkerError(f"{path}: OpenPifPaf checkpoint not found")
    return Path(path)


def load_network(openpifpaf: Any, path: Path, device: str) -> Any:
    """The network pickled in an OpenPifPaf checkpoint, in eval mode on ``device``."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # pickled model: user's own file
    except Exception as exc:  # unpickling can fail in many ways on a wrong file
        raise WorkerError(f"{path}: not a loadable OpenPifPaf checkpoint ({type(exc).__name__}: {exc})"[:300]) from None
    network = checkpoint.get("model") if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(network, openpifpaf.network.Shell):
        raise WorkerError(f"{path}: not an OpenPifPaf checkpoint (no OpenPifPaf network inside)")
    openpifpaf.network.model_migration.model_migration(network)
    return network.eval().to(device)


def torch_device(device: str) -> str:
    """``device`` if torch can use it; "cpu" (with a warning) when CUDA is asked for but absent."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("torch sees no CUDA device: OpenPifPaf runs on the CPU")
        return "cpu"
    return device


class OpenPifPafBackend:
    """People boxes and COCO-17 keypoints of whole frames from one OpenPifPaf network and its decoder."""

    name = "openpifpaf"

    def __init__(self, checkpoint: str | Path | None, device: str = "cpu", min_score: float = 0.3):
        path = check_checkpoint(checkpoint)
        self.openpifpaf = import_openpifpaf()
        transforms = self.openpifpaf.transforms
        self.device, self.min_score = torch_device(device), min_score
        self.network = load_network(self.openpifpaf, path, self.device)
        self.decoder = self.openpifpaf.decoder.factory(self.network.head_metas)
        self.preprocess = transforms.Compose([transforms.NormalizeAnnotations(),
                                              transforms.CenterPadTight(PAD_MULTIPLE), transforms.EVAL_TRANSFORM])

    def _person(self, annotation: Any, width: int, height: int) -> PersonDetection | None:
        """One decoded annotation as a detection in frame pixels; None below min_score or without a box."""
        x, y, w, h = (float(v) for v in annotation.bbox())
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(width), x + w), min(float(height), y + h)
        score = float(annotation.score)
        if score < self.min_score or x1 <= x0 or y1 <= y0:
            return None
        keypoints = np.asarray(annotation.data, np.float32).copy()
        keypoints[:, 2] = np.clip(keypoints[:, 2], 0.0, 1.0)
        return PersonDetection(np.array([x0, y0, x1 - x0, y1 - y0], np.float32), score, keypoints)

    def detect(self, video_uri: str, frames: Sequence[DecodedFrame]) -> list[list[PersonDetection]]:
        """The people OpenPifPaf finds in each frame (the frames of one video share a size: one batch)."""
        import torch
        from PIL import Image

        if not frames:
            return []
        prepared = [self.preprocess(Image.fromarray(frame.image), [], {"dataset_index": i}) for i, frame in enumerate(frames)]
        batch = torch.stack([image for image, _, _ in prepared])
        predictions = self.decoder.batch(self.network, batch, device=torch.device(self.device))
        out = []
        for frame, annotations, (_, _, meta) in zip(frames, predictions, prepared):
            height, width = frame.image.shape[:2]
            people = (self._person(a.inverse_transform(meta), width, height) for a in annotations)
            out.append([p for p in people if p is not None])
        return out
