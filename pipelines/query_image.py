"""Image queries: decode a person crop, validate its keypoint prompt, embed it with the store's KPR model.

Shared by `kpr search --image` and the web app, so both accept and refuse the same inputs.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from kpr_model.config import KPRModelError
from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.keypoints import NUM_KEYPOINTS, group_names
from kpr_model.model_files import open_encoder
from pipelines.errors import UserError
from storage import Store
from workers.crops import thumbnail_jpeg
from workers.errors import AnnotationError
from workers.json_input import read_json
from workers.keypoint_files import check_inside, prompt_from_json

MAX_PIXELS = 4096 * 4096


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 pixels of an encoded image (PNG, JPEG, ...), EXIF orientation applied.

    The size is checked from the header before any pixel is decoded, so a huge image costs nothing.
    """
    if not data:
        raise UserError("empty image data")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UserError(f"image of {width}x{height} pixels is too large (at most {max_pixels} pixels)")
            pixels = np.array(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise UserError(f"image is too large (at most {max_pixels} pixels)") from None
    except Image.UnidentifiedImageError:
        raise UserError("not an image file (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot decode the image: {exc}") from None
    if pixels.ndim != 3 or 0 in pixels.shape:
        raise UserError(f"image has no pixels (shape {pixels.shape})")
    return pixels


def parse_prompt(obj: Any, width: int, height: int, what: str = "keypoints") -> tuple[np.ndarray | None, np.ndarray | None]:
    """Positive keypoints [17, 3] and negative points [M, 3] (None when absent) from a JSON keypoint prompt.

    Accepts every form of workers.keypoint_files.prompt_from_json, e.g. clicked points
    ``{"positive": [{"joint": "left_ankle", "x": 20, "y": 90}], "negative": [{"x": 5, "y": 40}]}``,
    in crop pixels; UserError for malformed input or a point outside the ``width`` x ``height`` crop.
    """
    try:
        positive, skeletons = prompt_from_json(obj, what)
        check_inside(positive, skeletons, width, height, what)
    except AnnotationError as exc:
        raise UserError(str(exc)) from None
    points = skeletons.reshape(-1, 3)
    points = points[points[:, 2] > 0]
    return positive, (points if len(points) else None)


def read_prompt(path: str | Path, width: int, height: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """parse_prompt of a JSON prompt file."""
    path = Path(path)
    try:
        data = read_json(path, f"keypoints file not found: {path}")
    except AnnotationError as exc:
        raise UserError(str(exc)) from None
    return parse_prompt(data, width, height, what=str(path))


def part_names(num_parts: int) -> list[str]:
    """Display names of the K parts: the "eight" grouping's names when K == 8, else "part 1".."part K"."""
    return list(group_names("eight")) if num_parts == 8 else [f"part {i}" for i in range(1, num_parts + 1)]


def _normalised(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def parse_parts(values: Sequence[str], num_parts: int) -> list[int]:
    """0-based part indices from part names or 1-based numbers ("left_foot", "7"); UserError otherwise."""
    names = part_names(num_parts)
    index = {_normalised(name): i for i, name in enumerate(names)}
    chosen = []
    for value in values:
        text = _normalised(str(value))
        if text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= num_parts:
            chosen.append(int(text) - 1)
        elif text in index:
            chosen.append(index[text])
        else:
            raise UserError(f"unknown part {value!r}: use a part name ({', '.join(names)}) or a number 1..{num_parts}")
    return sorted(set(chosen))


def _point_skeletons(points: np.ndarray) -> np.ndarray:
    """Negative points [M, 3] as one-keypoint skeletons [M, 17, 3], the encoder's negative prompt input.

    The negative prompt channel is the max over every keypoint of every negative skeleton, so
    this is exact.
    """
    skeletons = np.zeros((len(points), NUM_KEYPOINTS, 3), np.float32)
    skeletons[:, 0] = points
    return skeletons


class QueryEncoder:
    """The store's KPR model, opened once, turning a query crop (and its keypoint prompt) into an embedding."""

    def __init__(self, model: str | Path, store: Store | None = None) -> None:
        try:
            self._encoder = open_encoder(model)
        except KPRModelError as exc:
            raise UserError(str(exc)) from None
        self.model_id = self._encoder.model_id
        if store is not None:
            stored = {v["model_id"] for v in store.video_rows("done")}
            if stored and self.model_id not in stored:
                raise UserError(f"model {model} is model {self.model_id}, but the store holds embeddings of "
                                f"{', '.join(sorted(stored))}")

    @property
    def num_parts(self) -> int:
        """K, the number of body parts the model embeds."""
        return self._encoder.num_parts

    @property
    def part_names(self) -> list[str]:
        """Display names of the model's K parts."""
        return part_names(self.num_parts)

    def embed(self, image_rgb: np.ndarray, positive: np.ndarray | None = None,
              negative: np.ndarray | None = None) -> ReIDEmbeddings:
        """One-row embedding of an RGB crop, prompted by target keypoints [17, 3] and negative points [M, 3]."""
        negatives = None if negative is None else [_point_skeletons(np.asarray(negative, np.float32))]
        return self._encoder.embed([image_rgb], None if positive is None else [positive], negatives)

    def thumbnail(self, image_rgb: np.ndarray) -> bytes:
        """The JPEG thumbnail shown for the query (same size as the store's)."""
        return thumbnail_jpeg(image_rgb)


def parse_time(text: str | None) -> float | None:
    """Epoch seconds, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise UserError(f"not a time: {text!r} (use ISO 8601 such as 2026-01-01T08:00:00, or epoch seconds)") from None
        value = (moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment).timestamp()
    if not math.isfinite(value):
        raise UserError(f"not a time: {text!r}")
    return value
