"""Checked reading of user-supplied JSON (sidecars, keypoint prompts): every problem is an AnnotationError."""
from __future__ import annotations

import json
import math
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
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
        raise AnnotationError(f"{path}: not a readable JSON file ({exc})") from None


def float_array(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``value`` as a float32 array of exactly ``shape`` with finite numbers."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # too large for float32 becomes inf, refused below
            array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise AnnotationError(f"{what}: expected numbers of shape {list(shape)}") from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise AnnotationError(f"{what}: expected finite numbers of shape {list(shape)}, got shape {list(array.shape)}")
    return array


def finite_number(value: Any, what: str) -> float:
    """``value`` as a float if it is a finite JSON number (not a bool); AnnotationError "<what> must be ..." otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            if math.isfinite(value):
                return float(value)
        except OverflowError:  # an int beyond the float range
            pass
    raise AnnotationError(f"{what} must be a finite number, got {value!r:.60}")
