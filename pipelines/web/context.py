"""A hit's context for the web app: where and when it was seen (the camera's name, its local time and UTC), where it
came from (provenance), its archived frame with the box drawn and a short clip around it, decoded on demand."""
from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import cv2
import numpy as np

from pipelines.times import clock_text, utc_text, zone_name
from storage import Store, sql
from workers.cameras import Cameras
from workers.decode import decode_frames
from workers.errors import DecodeError
from workers.frames import local_video_path, draw_box, frame_with_box

CLIP_SECONDS = 2.0  # seconds of video shown before and after the hit
CLIP_FPS = 4.0  # frames per second of the clip
CLIP_MAX_WIDTH = 480  # clip frames are scaled down to at most this width
CLIP_JPEG_QUALITY = 75
CLIP_CACHE_SIZE = 16  # clips kept, so reopening a hit does not decode again
DETECTION_COLUMNS = ["detection_id", "video_id", "camera_id", "frame_index", "timestamp", "bbox", "track_id", "model_id"]


@dataclass(frozen=True)
class HitSource:
    """A stored detection with its video's uri and frame rate: what its frame, clip and provenance need."""

    detection_id: str
    video_id: str
    uri: str
    camera_id: str
    frame_index: int
    timestamp: float
    bbox: tuple[float, float, float, float]
    track_id: str | None
    model_id: str
    fps: float | None


def local_text(timestamp: float, cameras: Cameras, camera_id: str) -> str:
    """A time in the camera's time zone with its date, zone and UTC offset: "2026-01-01 09:00:03 CET (UTC+01:00)"."""
    zone = cameras.display(camera_id).zone
    offset = datetime.fromtimestamp(timestamp, zone).strftime("%z")
    return f"{clock_text(timestamp, zone)} {zone_name(timestamp, zone)} (UTC{offset[:3]}:{offset[3:]})"


def _jpeg_data_uri(rgb: np.ndarray) -> str:
    """An RGB frame scaled to at most CLIP_MAX_WIDTH wide, as a JPEG data: URI."""
    height, width = rgb.shape[:2]
    if width > CLIP_MAX_WIDTH:
        rgb = cv2.resize(rgb, (CLIP_MAX_WIDTH, round(height * CLIP_MAX_WIDTH / width)), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, CLIP_JPEG_QUALITY])
    if not ok:
        raise DecodeError("a clip frame could not be encoded as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def _nearest_box(frame: int, boxes: dict[int, Sequence[float]], within: float) -> Sequence[float] | None:
    """The box of the tracked detection nearest to ``frame``, if one is at most ``within`` frames away."""
    if not boxes:
        return None
    nearest = min(boxes, key=lambda index: abs(index - frame))
    return boxes[nearest] if abs(nearest - frame) <= within else None


class HitContext:
    """Answers what the page shows of one hit; detections are looked up by id only (never used as paths)."""

    def __init__(self, store: Store, cameras: Cameras) -> None:
        self.store = store
        self.cameras = cameras
        self._videos: dict[str, dict] = {}
        self._clips: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    @cached_property
    def schema_version(self) -> int | None:
        """The schema version the store's detections were written with (read once, on the first hit opened)."""
        return self.store.table_stats().get("detections", {}).get("schema_version")

    def _video(self, video_id: str) -> dict:
        """A video's row (the videos table is re-read when a video is not known yet: ingestion may have added it)."""
        if video_id not in self._videos:
            self._videos = {row["video_id"]: row for row in self.store.video_rows()}
        return self._videos[video_id]

    def source(self, detection_id: str) -> HitSource:
        """The detection ``detection_id`` and its video (NotFoundError for an unknown id)."""
        row = self.store.get_detection(detection_id, DETECTION_COLUMNS)
        video = self._video(row["video_id"])
        duration, frames = video.get("duration"), video.get("num_frames")
        fps = frames / duration if duration and frames else None
        return HitSource(row["detection_id"], row["video_id"], video["uri"], row["camera_id"], int(row["frame_index"]),
                         float(row["timestamp"]), tuple(float(v) for v in row["bbox"]), row["track_id"] or None,
                         row["model_id"], fps)

    def describe(self, detection_id: str) -> dict:
        """Where and when the hit was seen (display name, local time with its zone, UTC) and its provenance."""
        hit = self.source(detection_id)
        display = self.cameras.display(hit.camera_id)
        return {
            "detection_id": hit.detection_id,
            "camera_id": hit.camera_id,
            "camera_name": display.name,
            "timezone": display.zone.key,
            "time_local": local_text(hit.timestamp, self.cameras, hit.camera_id),
            "time_utc": utc_text(hit.timestamp) + " UTC",
            "provenance": {"video_uri": hit.uri, "video_id": hit.video_id, "frame_index": hit.frame_index,
                           "detection_id": hit.detection_id, "track_id": hit.track_id, "bbox": list(hit.bbox),
                           "model_id": hit.model_id, "store_schema_version": self.schema_version},
        }

    def frame(self, detection_id: str) -> bytes:
        """The hit's archived frame with its box drawn, as JPEG (DecodeError when the video cannot be read)."""
        hit = self.source(detection_id)
        return frame_with_box(hit.uri, hit.frame_index, hit.bbox)

    def clip(self, detection_id: str) -> dict:
        """CLIP_SECONDS before and after the hit at CLIP_FPS, each frame with its tracklet's box where it was
        detected, as JPEG data URIs (at most 2 * CLIP_SECONDS * CLIP_FPS + 1 frames, CLIP_MAX_WIDTH wide); kept for
        the last CLIP_CACHE_SIZE hits."""
        with self._lock:
            if detection_id in self._clips:
                self._clips.move_to_end(detection_id)
                return self._clips[detection_id]
        hit = self.source(detection_id)
        step = (hit.fps or CLIP_FPS) / CLIP_FPS
        reach = round(CLIP_SECONDS * CLIP_FPS) if hit.fps else 0
        indices = sorted({hit.frame_index + round(k * step) for k in range(-reach, reach + 1)})
        boxes = self._track_boxes(hit, indices[0], indices[-1])
        frames = []
        for index, rgb in decode_frames(local_video_path(hit.uri), indices, batch_size=4):
            box = _nearest_box(index, boxes, step)
            frames.append({"frame_index": int(index), "src": _jpeg_data_uri(rgb if box is None else draw_box(rgb, box))})
        if not frames:
            raise DecodeError(f"{hit.uri}: has no frame {hit.frame_index}")
        clip = {"detection_id": hit.detection_id, "fps": CLIP_FPS, "hit_frame": hit.frame_index, "frames": frames}
        with self._lock:
            self._clips[detection_id] = clip
            while len(self._clips) > CLIP_CACHE_SIZE:
                self._clips.popitem(last=False)
        return clip

    def _track_boxes(self, hit: HitSource, first: int, last: int) -> dict[int, Sequence[float]]:
        """Frame index -> box of the hit's tracklet in frames [first, last] of its video (just the hit's own box
        when it has no tracklet)."""
        if hit.track_id is None:
            return {hit.frame_index: hit.bbox}
        where = sql.all_of([sql.equals("track_id", hit.track_id), sql.equals("video_id", hit.video_id),
                            f"frame_index >= {int(first)}", f"frame_index <= {int(last)}"])
        rows = self.store.query_detections(where, ["frame_index", "bbox"]).to_pylist()
        return {int(row["frame_index"]): row["bbox"] for row in rows} | {hit.frame_index: hit.bbox}
