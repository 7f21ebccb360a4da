"""Image queries: decode a person crop and embed it, with its keypoint prompt, by the store's model."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from kpr_model.config import KPRModelError
from kpr_model.embeddings import ReIDEmbeddings
from pipelines.errors import UserError
from pipelines.query_prompt import KeypointPrompt
from storage import Store

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


def read_query_image(image: bytes | Path) -> np.ndarray:
    """RGB pixels of a query image: encoded bytes (an upload), or an image file whose errors name it."""
    if isinstance(image, bytes):
        return decode_image(image)
    try:
        return decode_image(image.read_bytes())
    except (OSError, UserError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise UserError(f"cannot read query image {image}: {reason}") from None


class QueryEncoder:
    """The store's model (KPR or global), opened once, turning a query crop (and its keypoint prompt) into an embedding."""

    def __init__(self, model: str | Path, store: Store | None = None, input_coding: str | None = None) -> None:
        """Open ``model`` (``input_coding``: a global ONNX model's pixel coding); refuse it unless it is ``store``'s model."""
        # PyTorch's model code and timm: 1.3 s to import, which a search by a stored id (most searches) never needs.
        from kpr_model.model_files import open_encoder

        try:
            self._encoder = open_encoder(model, input_coding=input_coding)
        except KPRModelError as exc:
            raise UserError(str(exc)) from None
        self.model_id = self._encoder.model_id
        held = None if store is None else store.model()
        if held is not None and held["model_id"] != self.model_id:
            raise UserError(f"model {model} is model {self.model_id}, but the store at {store.uri} holds embeddings "
                            f"of model {held['model_id']}: query with the model the store was built with")

    def embed(self, image_rgb: np.ndarray, prompt: KeypointPrompt | None = None) -> ReIDEmbeddings:
        """One-row embedding of an RGB crop, prompted by its keypoint prompt when given."""
        if prompt is None:
            return self._encoder.embed([image_rgb])
        positive = None if prompt.positive is None else [prompt.positive]
        return self._encoder.embed([image_rgb], positive, [prompt.negative])
