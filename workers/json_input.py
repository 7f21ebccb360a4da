"""Checked reading of user-supplied JSON (sidecars, keypoint prompts): every problem is an AnnotationError."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from workers.errors import AnnotationError


def read_json(path: Path, missing: str) -> Any:
    """The parsed content of ``path``; ``missing`` is the message when the file does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AnnotationError(missing) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AnnotationError(f"{path}: not a readable JSON file ({exc})") from None


def float_array(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``value`` as a float32 array of exactly ``shape`` with finite numbers."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError(f"{what}: expected numbers of shape {list(shape)}") from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise AnnotationError(f"{what}: expected finite numbers of shape {list(shape)}, got shape {list(array.shape)}")
    return array
