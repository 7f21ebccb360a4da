"""Video decoding with decord: frame sampling at a target rate, with timestamps from the container."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from workers.errors import DecodeError
from workers.records import DecodedFrame

# Largest frame accepted: 8K UHD (a decoded RGB frame of it is ~100 MB). Bigger videos are refused from
# their container header, before any frame is decoded, rather than exhausting a worker's memory.
MAX_FRAME_PIXELS = 7680 * 4320
# Most bytes of RGB pixels that one batch of decoded frames may hold: batches of big frames get fewer frames.
MAX_BATCH_BYTES = 256 << 20
# A container declaring more frames than decord can index (by more than this share + 2 frames) is truncated.
TRUNCATION_TOLERANCE = 0.05


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video."""

    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def _header(path: Path) -> tuple[int, int]:
    """(pixels per frame, frame count) that the container header declares, read without decoding; 0 when unknown."""
    import cv2

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        width, height, count = (capture.get(p) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT,
                                                          cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    return max(0, int(width) * int(height)), max(0, int(count))


def _check_frame_size(path: Path, pixels: int) -> None:
    """Refuse frames above MAX_FRAME_PIXELS."""
    if pixels > MAX_FRAME_PIXELS:
        raise DecodeError(f"{path}: frames of {pixels / 1e6:.1f} Mpx exceed the {MAX_FRAME_PIXELS / 1e6:.1f} Mpx limit (8K)")


def _first_frame(reader, path: Path) -> np.ndarray:
    """The first frame's pixels, or DecodeError."""
    try:
        return reader[0].asnumpy()
    except Exception as exc:  # decord's DECORDError and friends
        raise DecodeError(f"{path}: cannot decode the first frame ({str(exc).splitlines()[0][:200]})") from None


def _open(path: str | Path):
    """A decord reader and its frames' pixel count; one DecodeError for unreadable, truncated or oversized videos."""
    import decord

    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file")
    pixels, declared = _header(path)
    _check_frame_size(path, pixels)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises DECORDError, RuntimeError or ValueError for bad input
        raise DecodeError(f"{path}: cannot decode video ({str(exc).splitlines()[0][:200]})") from None
    if len(reader) == 0:
        raise DecodeError(f"{path}: video has no frames")
    if len(reader) < declared * (1 - TRUNCATION_TOLERANCE) - 2:
        raise DecodeError(f"{path}: truncated: the container declares {declared} frames, only {len(reader)} are readable")
    if not pixels:  # the header did not say: learn the size from the first frame
        pixels = int(np.prod(_first_frame(reader, path).shape[:2]))
        _check_frame_size(path, pixels)
    return reader, pixels


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of a video, or DecodeError when it is not a readable video."""
    reader, _ = _open(path)
    height, width = _first_frame(reader, Path(path)).shape[:2]
    return VideoInfo(len(reader), float(reader.get_avg_fps()), int(width), int(height))


def sample_indices(num_frames: int, native_fps: float, target_fps: float | None) -> np.ndarray:
    """Frame indices that sample a video of ``native_fps`` at about ``target_fps`` (all frames if None)."""
    if not target_fps or target_fps >= native_fps or native_fps <= 0:
        return np.arange(num_frames)
    step = native_fps / target_fps
    return np.unique(np.floor(np.arange(0, num_frames, step)).astype(np.int64))


def iter_frame_batches(path: str | Path, target_fps: float | None = None, batch_size: int = 16,
                       start_frame: int = 0, end_frame: int | None = None) -> Iterator[list[DecodedFrame]]:
    """The sampled frames of a video in [start_frame, end_frame), decoded ``batch_size`` at a time (fewer for big
    frames, see MAX_BATCH_BYTES) so memory stays bounded whatever its length and size.

    Frames are sampled on the whole video's index grid, so a video decoded in segments gives the same frames
    as decoded whole.
    """
    reader, pixels = _open(path)
    batch_size = max(1, min(batch_size, MAX_BATCH_BYTES // (3 * pixels)))
    indices = sample_indices(len(reader), float(reader.get_avg_fps()), target_fps)
    indices = indices[(indices >= start_frame) & (indices < (len(reader) if end_frame is None else end_frame))]
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        try:
            pixels = reader.get_batch(chunk.tolist()).asnumpy()
            times = reader.get_frame_timestamp(chunk.tolist())[:, 0]
        except Exception as exc:
            raise DecodeError(f"{path}: decoding failed at frame {int(chunk[0])} ({str(exc).splitlines()[0][:200]})") from None
        yield [DecodedFrame(int(index), float(time_s), image) for index, time_s, image in zip(chunk, times, pixels)]


def decode_frames(path: str | Path, indices: list[int], batch_size: int = 16) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB pixels) of the given frames of a video, in ascending order, ``batch_size`` at a time."""
    reader, pixels = _open(path)
    wanted = sorted({i for i in indices if 0 <= i < len(reader)})
    batch_size = max(1, min(batch_size, MAX_BATCH_BYTES // (3 * pixels)))
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start:start + batch_size]
        try:
            frames = reader.get_batch(chunk).asnumpy()
        except Exception as exc:  # decord's DECORDError and friends
            raise DecodeError(f"{path}: decoding failed at frame {chunk[0]} ({str(exc).splitlines()[0][:200]})") from None
        yield from zip(chunk, frames)
