"""A hybrid model folder: a KPR checkpoint for the body parts and a global ReID ONNX model for the whole body.

A global model trained on real people (Intel's OMZ 0248) ranks whole bodies better than any KPR this project
can train without labels, while KPR gives the parts an investigator needs when a person is half hidden. The
hybrid embeds each crop with both: the global model's vector becomes the holistic entry (the ANN vector and
the whole-body term of the part distance, counted ``holistic_weight`` times among the visible parts) and KPR
gives the parts and their visibility. Layout, written by ``kpr hybrid``::

    hybrid.json     {"format": "kpr-hybrid", "version": 1, "kpr": "kpr", "global": "global.onnx",
                     "holistic_weight": 48.0, "input_coding": null}
    kpr/            the KPR checkpoint folder (config.json, model.safetensors)
    global.onnx     the global model

``holistic_weight`` is a search setting, not part of the embeddings: the model id covers the two models only.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from kpr_model.config import KPRModelError

HYBRID_FILE = "hybrid.json"
FORMAT_NAME = "kpr-hybrid"
FORMAT_VERSION = 1
KPR_FOLDER = "kpr"
GLOBAL_FILE = "global.onnx"
DEFAULT_HOLISTIC_WEIGHT = 48.0


class HybridError(KPRModelError):
    """A hybrid model folder is missing parts or says something impossible."""


@dataclass(frozen=True)
class HybridSpec:
    """What a hybrid folder holds: its KPR checkpoint, its global ONNX model, the holistic entry's weight among the
    visible parts, and the global model's pixel coding (None: as its file says)."""

    kpr: Path
    global_model: Path
    holistic_weight: float
    input_coding: str | None


def is_hybrid(path: str | Path) -> bool:
    """Whether ``path`` is a hybrid model folder (it holds ``hybrid.json``)."""
    return (Path(path) / HYBRID_FILE).is_file()


def check_holistic_weight(weight: float) -> float:
    """``weight`` when it is a finite number > 0; HybridError otherwise."""
    if not (isinstance(weight, (int, float)) and 0 < float(weight) < float("inf")):
        raise HybridError(f"the holistic weight must be a number > 0, got {weight!r}")
    return float(weight)


def read_hybrid(path: str | Path) -> HybridSpec:
    """The spec of the hybrid folder ``path``; HybridError naming what is wrong with it."""
    path = Path(path)
    try:
        document = json.loads((path / HYBRID_FILE).read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise HybridError(f"hybrid model {path}: unreadable {HYBRID_FILE}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise HybridError(f"hybrid model {path}: {HYBRID_FILE} is not a {FORMAT_NAME} file")
    if document.get("version") != FORMAT_VERSION:
        raise HybridError(f"hybrid model {path}: {HYBRID_FILE} version {document.get('version')!r} is not "
                          f"{FORMAT_VERSION}, the version this code reads")
    coding = document.get("input_coding")
    if not (isinstance(document.get("kpr"), str) and isinstance(document.get("global"), str)
            and (coding is None or isinstance(coding, str))):
        raise HybridError(f"hybrid model {path}: {HYBRID_FILE} needs the strings kpr and global")
    try:
        weight = check_holistic_weight(document.get("holistic_weight"))
    except HybridError as exc:
        raise HybridError(f"hybrid model {path}: {exc}") from None
    spec = HybridSpec(path / document["kpr"], path / document["global"], weight, coding)
    if not spec.global_model.is_file():
        raise HybridError(f"hybrid model {path} is incomplete: its global model {spec.global_model} is missing")
    return spec


def hybrid_model_id(kpr_id: str, global_id: str) -> str:
    """16 hex digits naming the pair of models (the embeddings they write), whatever the holistic weight."""
    return hashlib.sha256(f"hybrid\0{kpr_id}\0{global_id}".encode()).hexdigest()[:16]


def write_hybrid(out: str | Path, kpr: str | Path, global_model: str | Path, holistic_weight: float,
                 input_coding: str | None = None) -> Path:
    """Copy the KPR checkpoint folder and the global ONNX model into the new folder ``out`` with its ``hybrid.json``
    (the caller has checked that the two models fit together); HybridError when ``out`` exists."""
    out = Path(out)
    if out.exists():
        raise HybridError(f"{out} exists: give a new folder for the hybrid model")
    weight = check_holistic_weight(holistic_weight)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(kpr, staging / KPR_FOLDER)
    shutil.copyfile(global_model, staging / GLOBAL_FILE)
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kpr": KPR_FOLDER, "global": GLOBAL_FILE,
                "holistic_weight": weight, "input_coding": input_coding}
    (staging / HYBRID_FILE).write_text(json.dumps(document, indent=2) + "\n")
    staging.rename(out)  # a stopped copy leaves no half-written hybrid under the name asked for
    return out
