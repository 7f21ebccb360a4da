"""Video decoding with decord: frame sampling at a target rate, with timestamps from the container."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from workers.errors import DecodeError


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


@dataclass
class DecodedFrame:
    """One sampled frame: its index in the video, its time in seconds from the video start, RGB pixels."""

    frame_index: int
    time_s: float
    image: np.ndarray


def _open(path: str | Path):
    """Open a decord reader, turning decord's many failure types into one DecodeError."""
    import decord

    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises DECORDError, RuntimeError or ValueError for bad input
        raise DecodeError(f"{path}: cannot decode video ({str(exc).splitlines()[0][:200]})") from None
    if len(reader) == 0:
        raise DecodeError(f"{path}: video has no frames")
    return reader


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and size of a video, or DecodeError when it is not a readable video."""
    reader = _open(path)
    height, width = reader[0].shape[:2]
    return VideoInfo(len(reader), float(reader.get_avg_fps()), int(width), int(height))


def sample_indices(num_frames: int, native_fps: float, target_fps: float | None) -> np.ndarray:
    """Frame indices that sample a video of ``native_fps`` at about ``target_fps`` (all frames if None)."""
    if not target_fps or target_fps >= native_fps or native_fps <= 0:
        return np.arange(num_frames)
    step = native_fps / target_fps
    return np.unique(np.floor(np.arange(0, num_frames, step)).astype(np.int64))


def iter_frame_batches(path: str | Path, target_fps: float | None = None,
                       batch_size: int = 16) -> Iterator[list[DecodedFrame]]:
    """The sampled frames of a video, decoded ``batch_size`` at a time so memory stays bounded whatever its length."""
    reader = _open(path)
    indices = sample_indices(len(reader), float(reader.get_avg_fps()), target_fps)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        try:
            pixels = reader.get_batch(chunk.tolist()).asnumpy()
            times = reader.get_frame_timestamp(chunk.tolist())[:, 0]
        except Exception as exc:
            raise DecodeError(f"{path}: decoding failed at frame {int(chunk[0])} ({str(exc).splitlines()[0][:200]})") from None
        yield [DecodedFrame(int(index), float(time_s), image) for index, time_s, image in zip(chunk, times, pixels)]
