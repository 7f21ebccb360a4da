"""A small PNG of retrieval hits: per method, a few queries and their top hits framed green (same person) or red."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CELL = (40, 80)  # width, height of one thumbnail
COLOURS = 96  # palette size of the PNG: a photo montage at a fraction of the bytes
FRAME = 3
GAP = 12
HEADER = 22
GREEN, RED, GREY, BLUE = (40, 170, 40), (210, 40, 40), (150, 150, 150), (60, 90, 200)


def _tile(jpeg: bytes | None, colour: tuple[int, int, int]) -> np.ndarray:
    """One thumbnail (RGB) in a coloured frame; a blank grey tile when there is no image."""
    width, height = CELL
    tile = np.full((height + 2 * FRAME, width + 2 * FRAME, 3), colour, np.uint8)
    image = None if jpeg is None else cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    inner = np.full((height, width, 3), 230, np.uint8) if image is None else \
        cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (width, height), interpolation=cv2.INTER_AREA)
    tile[FRAME:FRAME + height, FRAME:FRAME + width] = inner
    return tile


def write_montage(path: Path, rows: Mapping[str, Sequence[tuple[bytes | None, Sequence[tuple[bytes | None, bool | None]]]]],
                  top: int) -> None:
    """Write ``rows`` as a PNG: per method (side by side, named above), its queries one per line, each query
    (blue frame) followed by its ``top`` hits, framed green when right, red when wrong, grey when unlabelled."""
    tile_w, tile_h = CELL[0] + 2 * FRAME, CELL[1] + 2 * FRAME
    lines = max(len(queries) for queries in rows.values())
    block_w = tile_w * (top + 1) + GAP
    canvas = np.full((HEADER + lines * (tile_h + 4), block_w * len(rows), 3), 255, np.uint8)
    for b, (name, queries) in enumerate(rows.items()):
        x0 = b * block_w
        cv2.putText(canvas, name, (x0 + 2, HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for line, (query, hits) in enumerate(queries):
            y = HEADER + line * (tile_h + 4)
            tiles = [_tile(query, BLUE)] + [_tile(jpeg, GREY if right is None else GREEN if right else RED)
                                            for jpeg, right in hits[:top]]
            for i, tile in enumerate(tiles):
                canvas[y:y + tile_h, x0 + i * tile_w:x0 + (i + 1) * tile_w] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).quantize(COLOURS).save(path, optimize=True)
