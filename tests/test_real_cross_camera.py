"""bench.real_cross_camera's parts: the derived-camera writer, tracklet labels, the metrics, the MEVID crops."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench import real_cross_camera
from bench.cross_camera_scoring import (
    all_invisible_rate,
    label_tracklet,
    ranked_items,
    retrieval_scores,
    summarise,
)
from bench.derived_camera import CameraStyle, write_derived_video
from bench.mevid_example import mevid_crops


def _frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_derived_camera_is_late_mirrored_smaller_and_darker(tmp_path):
    source = tmp_path / "source.mp4"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    for i in range(6):
        frame = np.full((64, 96, 3), 120, np.uint8)
        frame[16:48, 8 + 4 * i:28 + 4 * i] = 250  # a bright block on the left, moving right one step a frame
        writer.write(frame)
    writer.release()
    style = CameraStyle(quad=((0, 0), (1, 0), (1, 1), (0, 1)), size=(48, 32), mirror=True, gamma=2.0, frame_offset=2)
    target = tmp_path / "cam" / "derived.mp4"
    assert write_derived_video(source, target, style) == 4
    assert sorted(p.name for p in target.parent.iterdir()) == ["derived.mp4"]
    frames = _frames(target)
    assert len(frames) == 4 and frames[0].shape == (32, 48, 3)
    first = frames[0].mean(axis=(0, 2))
    block = np.argmax(first)  # source frame 2: block at x 16..36 of 96, mirrored: 60..80 of 96 = 30..40 of 48
    assert 28 <= block <= 41, first.round()
    assert frames[0].mean() < 0.8 * _frames(source)[2].mean()


def test_an_occluded_camera_hides_its_box_and_shows_the_rest(tmp_path):
    source = tmp_path / "source.mp4"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    for _ in range(3):
        writer.write(np.full((64, 96, 3), 200, np.uint8))
    writer.release()
    style = CameraStyle(quad=((0, 0), (1, 0), (1, 1), (0, 1)), size=(96, 64), occluder=(0.0, 0.5, 1.0, 1.0),
                        occluder_rgb=(30, 60, 90))
    write_derived_video(source, tmp_path / "occluded.mp4", style)
    frame = cv2.cvtColor(_frames(tmp_path / "occluded.mp4")[0], cv2.COLOR_BGR2RGB).astype(float)
    assert np.allclose(frame[:28].mean(axis=(0, 1)), 200, atol=12)  # above the counter: the scene
    assert np.allclose(frame[36:].mean(axis=(0, 1)), (30, 60, 90), atol=12)  # below it: the counter


def test_tracklets_are_labelled_by_the_span_holding_most_of_their_frames():
    spans = {0: (0, 100), 1: (200, 300)}
    assert label_tracklet([10, 20, 30, 40, 50], spans) == 0
    assert label_tracklet([210, 220, 230, 240, 150], spans) == 1  # 4 of 5 in person 1's span: 0.8
    assert label_tracklet([210, 220, 230, 150, 160], spans) is None  # 3 of 5: too mixed to call
    assert label_tracklet([90, 95, 205, 210, 215], spans) is None  # two people
    assert label_tracklet([150, 160], spans) is None and label_tracklet([], spans) is None


def test_retrieval_scores_skip_unlabelled_items_and_average_precision_at_each_hit():
    assert ranked_items(["b", "a", None, "b", "c", "a"]) == ["b", "a", "c"]
    top1, ap = retrieval_scores(1, [None, 1, 2, 1])  # kept: right, wrong, right
    assert top1 == 1.0 and ap == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert retrieval_scores(2, [1, 2, None]) == (0.0, 0.5)
    assert retrieval_scores(3, [1, 2, None]) is None
    assert summarise([(1.0, 1.0), None, (0.0, 0.5)]) == {"top1": 0.5, "map": 0.75, "queries": 2}
    assert summarise([None]) == {"top1": None, "map": None, "queries": 0}


def test_crop_test_scores_leave_junk_pairs_out():
    labels = np.array([0, 0, 1])
    distances = np.array([[0.0, 0.5, 0.4], [0.5, 0.0, 0.1], [0.4, 0.1, 0.0]])
    scores = real_cross_camera.crop_test_scores(distances, labels, labels, np.eye(3, dtype=bool))
    # query 0: 2 (wrong) then 1 (right); query 1: 2 (wrong) then 0; query 2: no other crop of person 1
    assert scores == {"top1": 0.0, "map": 0.5, "queries": 2}


def test_all_invisible_rate_counts_only_confidently_posed_detections():
    keypoints = np.zeros((4, 17, 3))
    keypoints[:3, :5, 2] = 0.3  # three detections with exactly 5 confident keypoints; the fourth has none
    visibility = np.array([[0.1, 0.4], [0.6, 0.0], [0.2, 0.49], [0.0, 0.0]])
    assert all_invisible_rate(keypoints, visibility) == pytest.approx(2 / 3, abs=1e-4)
    assert all_invisible_rate(keypoints[3:], visibility[3:]) is None


def test_mevid_crops_are_three_people_with_enrolment_photos_first(shared_data):
    crops, labels, enrolment = mevid_crops(shared_data)
    assert len(crops) == 39 and enrolment.sum() == 17
    assert list(np.bincount(labels[enrolment])) == [6, 6, 5] and list(np.bincount(labels[~enrolment])) == [8, 8, 6]
    assert all(crop.shape[0] > 100 and crop.shape[1] > 40 for crop in crops)
    greenish = [c for c, l in zip(crops[17:], labels[17:]) if l == 1]
    # crops are cut inside their boxes: no pure box-green column is left at their edges
    assert not any(((c[:, [0, -1], 1] > 200) & (c[:, [0, -1], 0] < 130)).mean() > 0.5 for c in greenish)


def test_help_runs_without_shared_data(capsys):
    with pytest.raises(SystemExit) as stop:
        real_cross_camera.main(["--help"])
    assert stop.value.code == 0 and "kpr hybrid" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["--method", "kpr"], "--method takes NAME=MODEL"),
    (["--method", "kpr={tmp}/nowhere"], "model of method kpr not found"),
    (["--method", "bad={tmp}/bad.onnx"], "method bad:"),
    (["--method", "kpr={ckpt}", "--method", "h={tmp}/broken_hybrid"], "method h: hybrid model"),
])
def test_method_mistakes_are_one_line_and_exit_2(argv, expected, tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    (tmp_path / "broken_hybrid").mkdir()
    (tmp_path / "broken_hybrid" / "hybrid.json").write_text("{}")
    values = {"tmp": tmp_path, "ckpt": tiny_checkpoint}
    work = tmp_path / "work"
    assert real_cross_camera.main(["--only", "--work", str(work), *(a.format(**values) for a in argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not work.exists()
