"""Workers without Ray: decoding, sidecar parsing, crops and prompts, discovery."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from support import write_video
from workers.annotations import AnnotationsBackend, load_sidecar
from workers.crops import cut_person_crops, thumbnail_jpeg
from workers.decode import iter_frame_batches, probe_video, sample_indices
from workers.detections import PersonDetection
from workers.discover import VideoTask, discover_videos, list_video_files
from workers.errors import AnnotationError, ArchiveError, DecodeError
from workers.records import DecodedFrame
from workers.segments import plan_segments


def _skeleton(x: float, y: float, conf: float = 2.0) -> list:
    return [[x + i, y + i, conf] for i in range(17)]


def test_sample_indices_follow_target_fps():
    assert sample_indices(30, 30.0, 10.0).tolist() == list(range(0, 30, 3))
    assert sample_indices(5, 10.0, None).tolist() == [0, 1, 2, 3, 4]
    assert sample_indices(5, 10.0, 50.0).tolist() == [0, 1, 2, 3, 4]


def test_decode_samples_frames_with_container_timestamps(tmp_path):
    video = tmp_path / "cam" / "v.mp4"
    video.parent.mkdir()
    write_video(video, frames=30, fps=10.0)
    info = probe_video(video)
    assert (info.num_frames, info.width, info.height) == (30, 96, 64)
    batches = list(iter_frame_batches(video, target_fps=5.0, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    frames = [f for batch in batches for f in batch]
    assert [f.frame_index for f in frames] == list(range(0, 30, 2))
    assert frames[3].time_s == pytest.approx(0.6, abs=0.02)
    assert frames[1].image.shape == (64, 96, 3)
    assert abs(int(frames[1].image.mean()) - 16) <= 4


def test_segments_decode_the_same_frames_as_the_whole_video(tmp_path):
    video = tmp_path / "v.mp4"
    write_video(video, frames=30, fps=10.0)
    segments = plan_segments(VideoTask("v", str(video), "cam"), probe_video(video), segment_s=0.7)
    assert [(s.start_frame, s.end_frame) for s in segments] == [(0, 7), (7, 14), (14, 21), (21, 28), (28, 30)]
    whole = [f for batch in iter_frame_batches(video, target_fps=4.0, batch_size=3) for f in batch]
    pieces = [f for s in segments
              for batch in iter_frame_batches(video, 4.0, 3, s.start_frame, s.end_frame) for f in batch]
    assert [f.frame_index for f in whole] == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27]
    assert [(f.frame_index, f.time_s) for f in pieces] == [(f.frame_index, f.time_s) for f in whole]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(pieces, whole))


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_unreadable_video_gives_decode_error(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(DecodeError, match="bad.mp4"):
        probe_video(bad)


def test_sidecar_parsing_and_errors(tmp_path):
    sidecar = {"format": "kpr-sidecar-v1", "camera_id": "c1", "start_time": 100.0, "fps": 10.0,
               "tracks": {"3": {"identity": "id0001"}},
               "frames": [{"frame_index": 2, "detections": [
                   {"track_id": 3, "bbox": [1, 2, 30, 60], "keypoints": _skeleton(5, 5, 2)}]}]}
    path = tmp_path / "v.json"
    path.write_text(json.dumps(sidecar))
    parsed = load_sidecar(path)
    assert parsed.camera_id == "c1" and parsed.identities == {"3": "id0001"}
    det = parsed.frames[2][0]
    assert det.track_id == "3" and det.keypoints[:, 2].tolist() == [1.0] * 17
    frames = [DecodedFrame(i, 0.0, np.zeros((4, 4, 3), np.uint8)) for i in (1, 2)]
    assert [len(d) for d in AnnotationsBackend().detect(str(tmp_path / "v.mp4"), frames)] == [0, 1]

    sidecar["frames"][0]["detections"][0]["keypoints"] = [[1, 2]] * 17
    path.write_text(json.dumps(sidecar))
    with pytest.raises(AnnotationError, match="keypoints"):
        load_sidecar(path)
    path.write_text("{broken")
    with pytest.raises(AnnotationError, match="not a readable JSON"):
        load_sidecar(path)
    with pytest.raises(AnnotationError, match="no sidecar"):
        load_sidecar(tmp_path / "missing.json")


def test_crops_carry_other_people_as_negative_prompts():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[10:60, 10:40] = 200
    target_kps = np.array(_skeleton(15, 15, 1.0), np.float32)
    intruder_kps = np.array(_skeleton(25, 30, 1.0), np.float32)
    far_kps = np.array(_skeleton(80, 70, 1.0), np.float32)
    detections = [PersonDetection(np.array([10, 10, 30, 50], np.float32), 1.0, target_kps),
                  PersonDetection(np.array([20, 25, 30, 50], np.float32), 1.0, intruder_kps),
                  PersonDetection(np.array([75, 60, 20, 30], np.float32), 1.0, far_kps)]
    crop = cut_person_crops(frame, detections)[0]
    assert crop.image.shape == (50, 30, 3) and crop.image.min() == 200
    assert crop.keypoints[0, :2].tolist() == [5.0, 5.0]
    assert crop.negative_keypoints.shape == (1, 17, 3)
    inside = crop.negative_keypoints[0, :, 2] > 0
    assert inside.any() and not inside.all()
    jpeg = thumbnail_jpeg(crop.image)
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[0] == 128


def test_discovery_names_videos_by_content_and_camera_folder(tmp_path):
    for cam, frames in (("north", 5), ("south", 6)):
        (tmp_path / cam).mkdir()
        write_video(tmp_path / cam / "a.mp4", frames=frames)
    shutil.copy(tmp_path / "north" / "a.mp4", tmp_path / "south" / "copy_of_north.mp4")
    (tmp_path / "notes.txt").write_text("not a video")
    tasks = discover_videos(list_video_files(tmp_path))
    assert [(t.camera_id, t.uri.rsplit("/", 1)[-1]) for t in tasks] == [("north", "a.mp4"), ("south", "a.mp4")]
    assert tasks[0].video_id != tasks[1].video_id
    with pytest.raises(ArchiveError, match="archive not found"):
        list_video_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="no video files"):
        list_video_files(tmp_path / "empty")


def test_discovery_follows_links_to_camera_folders_and_ends_a_link_loop(tmp_path):
    (tmp_path / "mounts" / "north").mkdir(parents=True)
    write_video(tmp_path / "mounts" / "north" / "a.mp4", frames=5)
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "north").symlink_to(tmp_path / "mounts" / "north", target_is_directory=True)
    (tmp_path / "mounts" / "north" / "loop").symlink_to(tmp_path / "archive", target_is_directory=True)
    tasks = discover_videos(list_video_files(tmp_path / "archive"))
    assert [(t.camera_id, t.uri.rsplit("/", 1)[-1]) for t in tasks] == [("north", "a.mp4")]
