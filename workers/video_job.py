"""Per-video CPU work without Ray: probe and segment a video, detect people in batches of frames, cut crops."""
from __future__ import annotations

from typing import Sequence

from workers.backends import BackendConfig, make_backend
from workers.crops import cut_person_crops, thumbnail_jpeg
from workers.decode import iter_frame_batches, probe_video
from workers.discover import VideoTask
from workers.records import BatchCrops, DecodedFrame, DetectionRecord, VideoFacts, detection_id
from workers.segments import Segment, plan_segments
from workers.video_clocks import VideoClocks, camera_and_start


def plan_video(task: VideoTask, backend: BackendConfig, segment_s: float,
               clocks: VideoClocks = VideoClocks()) -> tuple[VideoFacts, list[Segment]]:
    """``task``'s video facts (camera and start time: see camera_and_start) and its segments."""
    info = probe_video(task.uri)
    camera, start = camera_and_start(task, backend, info.duration, clocks)
    facts = VideoFacts(task, camera, start, info.duration, info.num_frames)
    return facts, plan_segments(task, info, segment_s)


class FrameDetector:
    """Holds one detection + pose backend (its models load once) and turns batches of frames into crops."""

    def __init__(self, config: BackendConfig, device: str = "cpu", threads: int | None = None):
        self.backend = make_backend(config, device, threads)

    def detect(self, task: VideoTask, start_time: float, frames: Sequence[DecodedFrame]) -> BatchCrops:
        """Detect people in ``frames`` of ``task``'s video; one record, crop and thumbnail per person."""
        records, crops = [], []
        dropped_before = self.backend.dropped
        for frame, detections in zip(frames, self.backend.detect(task.uri, frames)):
            for ordinal, (det, crop) in enumerate(zip(detections, cut_person_crops(frame.image, detections))):
                track = f"{task.video_id[:12]}-t{det.track_id}" if det.track_id is not None else ""
                records.append(DetectionRecord(
                    detection_id(task.video_id, frame.frame_index, ordinal), frame.frame_index,
                    start_time + frame.time_s, det.bbox, det.score, det.keypoints, track, thumbnail_jpeg(crop.image)))
                crops.append(crop)
        return BatchCrops(len(frames), records, crops, self.backend.dropped - dropped_before)


def extract_video_crops(task: VideoTask, target_fps: float | None, backend: BackendConfig = BackendConfig(),
                        batch_frames: int = 16) -> tuple[VideoFacts, BatchCrops]:
    """Decode ``task``'s whole video at ``target_fps``, detect people and cut their crops, in this process:
    the video's facts and all its detections as one batch."""
    facts, _ = plan_video(task, backend, segment_s=float("inf"))
    detector = FrameDetector(backend)
    batches = [detector.detect(task, facts.start_time, frames)
               for frames in iter_frame_batches(task.uri, target_fps, batch_frames)]
    return facts, BatchCrops(sum(b.frames for b in batches), [r for b in batches for r in b.records],
                             [c for b in batches for c in b.crops], sum(b.dropped for b in batches))
