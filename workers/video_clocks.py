"""When each video started: its sidecar's start time or its file time, corrected by the cameras file.

The cameras file is turned into VideoClocks once per run, before any work, so the per-video planning on the workers
needs no file but its video: each camera's clock offset, and the start of every video of a camera that gives a
``start_time`` (its videos in path order, back to back from that time).
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from workers.backends import BackendConfig, video_camera_and_start
from workers.cameras import Cameras
from workers.decode import probe_video
from workers.discover import VideoTask
from workers.errors import CamerasError, WorkerError


@dataclass(frozen=True)
class VideoClocks:
    """A cameras file's time corrections: seconds to add per camera, set starts (UTC epoch s) per video uri, and
    why a video of a camera with a ``start_time`` has no start (an earlier video of it could not be read)."""

    offsets: dict[str, float] = field(default_factory=dict)
    starts: dict[str, float] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)


def camera_and_start(task: VideoTask, backend: BackendConfig, duration: float,
                     clocks: VideoClocks = VideoClocks()) -> tuple[str, float]:
    """The camera and true start time (UTC epoch s) of ``task``'s video of ``duration`` seconds.

    The start is the cameras file's for a camera with a ``start_time``; else the annotation file's, or, without
    one, the file's modification time taken as the video's end; plus the camera's clock offset.
    """
    if task.uri in clocks.unknown:
        raise CamerasError(clocks.unknown[task.uri])
    camera, start = video_camera_and_start(backend, task.uri)
    camera = camera or task.camera_id
    if task.uri in clocks.starts:
        return camera, clocks.starts[task.uri]
    if start is None:
        start = os.path.getmtime(task.uri) - duration
    return camera, float(start) + clocks.offsets.get(camera, 0.0)


def video_clocks(cameras: Cameras, tasks: Sequence[VideoTask], backend: BackendConfig) -> VideoClocks:
    """The time corrections of ``cameras`` for the archive's videos ``tasks`` (those already ingested included, so
    a camera's sequence of videos is the same in every run). Probes the videos of cameras with a ``start_time``."""
    offsets = {camera_id: camera.clock_offset_s for camera_id, camera in cameras.cameras.items()
               if camera.clock_offset_s}
    sequenced = {camera_id: camera.start_time for camera_id, camera in cameras.cameras.items()
                 if camera.start_time is not None}
    if not sequenced:
        return VideoClocks(offsets)
    by_camera: dict[str, list[VideoTask]] = defaultdict(list)
    for task in sorted(tasks, key=lambda t: t.uri):
        by_camera[_camera_of(task, backend)].append(task)
    starts, unknown = {}, {}
    for camera_id, start in sequenced.items():
        broken = None
        for task in by_camera.get(camera_id, []):
            if broken is not None:
                unknown[task.uri] = f"{task.uri}: start unknown: the earlier video {broken} of camera {camera_id}, " \
                                    "which starts at its start_time, cannot be read"
                continue
            starts[task.uri] = start
            try:
                start += probe_video(task.uri).duration
            except WorkerError:
                broken = task.uri
    return VideoClocks(offsets, starts, unknown)


def _camera_of(task: VideoTask, backend: BackendConfig) -> str:
    """The video's camera as its planning will find it: its annotation file's, else its folder's."""
    try:
        camera, _ = video_camera_and_start(backend, task.uri)
    except WorkerError:  # a bad annotation file fails the video when it is planned
        camera = None
    return camera or task.camera_id
