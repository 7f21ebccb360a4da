"""Per-video segments: the work items of decoding, so that one long video is spread over many workers."""
from __future__ import annotations

from dataclasses import dataclass

from workers.decode import VideoInfo
from workers.discover import VideoTask


@dataclass(frozen=True)
class Segment:
    """Frames [start_frame, end_frame) of one video, the ``index``-th of its ``count`` segments."""

    task: VideoTask
    index: int
    count: int
    start_frame: int
    end_frame: int


def plan_segments(task: VideoTask, info: VideoInfo, segment_s: float) -> list[Segment]:
    """Cut ``task``'s video into consecutive segments of about ``segment_s`` seconds (one when its fps is unknown)."""
    frames = max(info.num_frames, 1)
    length = max(1, round(segment_s * info.fps)) if 0 < segment_s * info.fps < frames else frames
    starts = range(0, frames, length)
    return [Segment(task, i, len(starts), start, min(start + length, frames)) for i, start in enumerate(starts)]
