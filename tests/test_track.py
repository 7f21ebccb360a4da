"""The per-video tracker: people crossing keep their identities, nobody teleports, gaps are measured in seconds,
ids are stable; detector boxes too small or too unsure are dropped before tracking."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kpr_model.embeddings import ReIDEmbeddings
from pipelines.cli import main
from workers.backends import BackendConfig
from workers.discover import VideoTask
from workers.errors import WorkerError
from workers.records import DecodedFrame, DetectionRecord, detection_id
from workers.track import TrackerConfig, track_video
from workers.video_job import FrameDetector

DIM, PARTS = 16, 4
VIDEO = "0123456789abcdef-video"
PREFIX = VIDEO[:12]


def _appearances(people: int, seed: int = 0) -> np.ndarray:
    """One unit appearance vector per person, pairwise (nearly) orthogonal."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return basis[:people]


def _scene(paths: dict[int, list[tuple[float, float, float] | None]], fps: float, seed: int = 1,
           looks: np.ndarray | None = None, height: float = 150.0):
    """Detections of people following ``paths`` (per frame: (x, y, det_score) or None when unseen), in frame order.

    Returns the records, their embeddings (each person's appearance ``looks`` + small noise) and each record's
    true person; every box is ``height`` pixels tall unless a path step gives a fourth value, its height.
    """
    rng = np.random.default_rng(seed)
    looks = _appearances(len(paths)) if looks is None else looks
    records, people, embs = [], [], []
    frames = max(len(path) for path in paths.values())
    for frame in range(frames):
        for ordinal, (person, path) in enumerate(paths.items()):
            seen = path[frame] if frame < len(path) else None
            if seen is None:
                continue
            x, y, score, h = (*seen, height)[:4]
            records.append(DetectionRecord(
                detection_id(VIDEO, frame, ordinal), frame, 1_000.0 + frame / fps, np.array([x, y, 0.4 * h, h], np.float32),
                score, np.zeros((17, 3), np.float32), "", f"jpeg-{frame}-{person}".encode()))
            people.append(person)
            noisy = looks[person] + 0.05 * rng.standard_normal(DIM)
            embs.append(noisy / np.linalg.norm(noisy))
    n = len(records)
    parts = rng.standard_normal((n, PARTS, DIM))
    parts = (parts / np.linalg.norm(parts, axis=-1, keepdims=True)).astype(np.float32)
    embeddings = ReIDEmbeddings(np.array(embs, np.float32), parts, np.full((n, PARTS), 0.8, np.float32))
    return records, embeddings, people


def _walk(x0: float, y0: float, vx: float, vy: float, frames: int, score: float = 0.9) -> list[tuple[float, float, float]]:
    """Positions of a person walking at constant speed (pixels per frame)."""
    return [(x0 + vx * f, y0 + vy * f, score) for f in range(frames)]


def _identity_report(records: list[DetectionRecord], people: list[int]) -> tuple[float, int]:
    """(purity of the predicted tracks, number of tracks per true person summed): (1.0, people) means perfect."""
    tracks: dict[str, list[int]] = {}
    for record, person in zip(records, people):
        tracks.setdefault(record.track_id, []).append(person)
    purity = sum(max(members.count(p) for p in set(members)) for members in tracks.values()) / len(records)
    fragments = sum(len({r.track_id for r, p in zip(records, people) if p == person}) for person in set(people))
    return purity, fragments


def _meet_and_turn_back() -> dict[int, list]:
    """Two people walk towards each other, meet with overlapping boxes and turn back; a third crosses them vertically."""
    a = _walk(0, 100, 20, 0, 11) + _walk(180, 100, -20, 0, 10)
    b = _walk(420, 100, -20, 0, 11) + _walk(240, 100, 20, 0, 10)
    c = _walk(210, -200, 0, 30, 21)
    return {0: a, 1: b, 2: c}


def test_people_crossing_and_turning_back_keep_their_identities() -> None:
    records, embeddings, people = _scene(_meet_and_turn_back(), fps=5.0)
    tracklets = track_video(VIDEO, records, embeddings)
    assert _identity_report(records, people) == (1.0, 3)
    assert [t.track_id for t in tracklets] == [f"{PREFIX}-t1", f"{PREFIX}-t2", f"{PREFIX}-t3"]
    assert [t.n_detections for t in tracklets] == [21, 21, 21]
    # Motion alone predicts the two walking through each other: appearance is what keeps them apart.
    motion_only = TrackerConfig(iou_weight=1.0, appearance_gate=float("inf"), reid_gate=0.0)
    records, embeddings, people = _scene(_meet_and_turn_back(), fps=5.0)
    track_video(VIDEO, records, embeddings, motion_only)
    assert _identity_report(records, people)[0] < 1.0


def test_two_similar_looking_people_crossing_paths_keep_their_ids() -> None:
    # Two people dressed alike (cosine distance about 0.1, as a real model gives) walk through each other:
    # motion carries each along its own line, and neither jumps to the other's side.
    looks = _appearances(2)
    alike = np.stack([looks[0], 0.95 * looks[0] + 0.31 * looks[1]])
    paths = {0: _walk(0, 100, 25, 3, 20), 1: _walk(475, 160, -25, -3, 20)}
    records, embeddings, people = _scene(paths, fps=5.0, looks=alike / np.linalg.norm(alike, axis=1, keepdims=True))
    track_video(VIDEO, records, embeddings)
    assert _identity_report(records, people) == (1.0, 2)


def test_a_box_teleporting_across_the_frame_or_changing_scale_starts_a_new_tracklet() -> None:
    # Same look throughout: only motion and scale can tell that these are not one person's steps.
    walk = _walk(0, 50, 10, 0, 5)
    teleport = walk + _walk(900, 400, 10, 0, 5)          # 0.2 s later, 6 box heights away
    shrink = walk + [(x, y + 100, s, 50.0) for x, y, s in _walk(50, 50, 10, 0, 5)]  # a bag where feet were
    for path in (teleport, shrink):
        records, embeddings, _ = _scene({0: path}, fps=5.0)
        tracklets = track_video(VIDEO, records, embeddings)
        assert [t.n_detections for t in tracklets] == [5, 5]
    # A person walking fast (2 box heights per second) is followed whatever the sampling rate.
    for fps in (2.0, 10.0):
        records, embeddings, _ = _scene({0: _walk(0, 50, 300 / fps, 0, int(4 * fps))}, fps=fps)
        assert len(track_video(VIDEO, records, embeddings)) == 1


def _squeezed(embeddings: ReIDEmbeddings, factor: float) -> ReIDEmbeddings:
    """The same detections as a model whose cosine distances are all ``factor`` times these would give them."""
    axis = _appearances(DIM)[-1]  # orthogonal to every person's look
    flat = embeddings.global_emb - np.outer(embeddings.global_emb @ axis, axis)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    squeezed = np.sqrt(1.0 - factor) * axis + np.sqrt(factor) * flat
    return ReIDEmbeddings(squeezed.astype(np.float32), embeddings.parts, embeddings.visibility)


def test_the_appearance_gates_follow_the_models_own_distance_scale() -> None:
    # A model whose distances are ten times smaller (everyone within 0.1 of everyone, as a model trained on other
    # data sees a crowd) links the same tracks: the gates are in units of the video's distance between two people.
    records, embeddings, people = _scene(_meet_and_turn_back(), fps=5.0)
    track_video(VIDEO, records, embeddings)
    expected = [r.track_id for r in records]
    again, _, _ = _scene(_meet_and_turn_back(), fps=5.0)
    track_video(VIDEO, again, _squeezed(embeddings, 0.1))
    assert [r.track_id for r in again] == expected and _identity_report(again, people) == (1.0, 3)


@pytest.mark.parametrize("fps", [2.0, 25.0])
def test_a_gap_shorter_than_max_gap_keeps_the_id_and_a_longer_one_starts_a_new_track(fps: float) -> None:
    config = TrackerConfig(max_gap_s=2.0)
    step = 40.0 / fps  # 40 px/s whatever the sampling rate
    walk = _walk(0, 50, step, 0, int(6 * fps))
    short_gap = [None if 2.0 <= f / fps < 3.5 else p for f, p in enumerate(walk)]
    long_gap = [None if 2.0 <= f / fps < 5.0 else p for f, p in enumerate(walk)]
    for path, expected_tracks in ((short_gap, 1), (long_gap, 2)):
        records, embeddings, _ = _scene({0: path}, fps=fps)
        tracklets = track_video(VIDEO, records, embeddings, config)
        assert len(tracklets) == expected_tracks
        assert len({r.track_id for r in records}) == expected_tracks


def test_a_person_reappearing_elsewhere_within_the_gap_is_relinked_by_appearance() -> None:
    path = _walk(0, 50, 10, 0, 5) + [None] * 4 + _walk(400, 300, -10, 0, 5)
    records, embeddings, _ = _scene({0: path, 1: _walk(600, 50, 0, 0, 14)}, fps=5.0)
    tracklets = track_video(VIDEO, records, embeddings)
    assert sorted(t.n_detections for t in tracklets) == [10, 14]


def test_annotation_ids_are_kept_and_new_ids_avoid_them() -> None:
    records, embeddings, people = _scene({0: _walk(0, 0, 5, 0, 6), 1: _walk(300, 0, 5, 0, 6)}, fps=5.0)
    for record, person in zip(records, people):
        if person == 1:  # annotated, split into two ground-truth tracks the tracker would have joined
            record.track_id = f"{PREFIX}-t1" if record.frame_index < 3 else "gt-9"
    tracklets = track_video(VIDEO, records, embeddings)
    assert {t.track_id: t.n_detections for t in tracklets} == {f"{PREFIX}-t1": 3, "gt-9": 3, f"{PREFIX}-t2": 6}
    assert {r.track_id for r, p in zip(records, people) if p == 0} == {f"{PREFIX}-t2"}


def test_ids_are_deterministic_and_numbered_by_first_appearance() -> None:
    late = [None] * 4 + _walk(300, 0, 5, 0, 6)
    records, embeddings, people = _scene({0: late, 1: _walk(0, 0, 5, 0, 10)}, fps=5.0)
    shuffled = np.random.default_rng(3).permutation(len(records))
    mixed = [records[i] for i in shuffled]
    tracklets = track_video(VIDEO, mixed, embeddings.select(shuffled))
    by_person = {p: r.track_id for r, p in zip(records, people)}
    assert by_person == {1: f"{PREFIX}-t1", 0: f"{PREFIX}-t2"}
    again, again_emb, _ = _scene({0: late, 1: _walk(0, 0, 5, 0, 10)}, fps=5.0)
    track_video(VIDEO, again, again_emb)
    assert [r.track_id for r in again] == [r.track_id for r in records]
    assert [(t.track_id, t.t_start, t.t_end) for t in tracklets] == [(f"{PREFIX}-t1", 1_000.0, 1_001.8),
                                                                     (f"{PREFIX}-t2", 1_000.8, 1_001.8)]


def test_tracklet_carries_the_best_thumbnail_and_the_aggregated_embedding() -> None:
    path = _walk(0, 0, 5, 0, 6)
    path[4] = (20.0, 0.0, 0.99)
    records, embeddings, _ = _scene({0: path}, fps=5.0)
    embeddings.visibility[2] = 1.0  # fully visible: 0.9 x 1.0 beats the others' 0.9 x 0.8
    embeddings.visibility[4] = 0.5  # the highest det_score, half visible: 0.99 x 0.5
    (tracklet,) = track_video(VIDEO, records, embeddings)
    assert tracklet.best_detection_id == records[2].detection_id and tracklet.thumbnail == records[2].thumbnail
    assert len(tracklet.embeddings) == 1 and tracklet.embeddings.num_parts == PARTS
    assert float(tracklet.embeddings.global_emb[0] @ _appearances(1)[0]) > 0.99


def test_short_tracks_are_dropped_with_min_detections_and_bad_input_is_refused() -> None:
    records, embeddings, people = _scene({0: _walk(0, 0, 5, 0, 6), 1: [None, None, (400.0, 0.0, 0.5)]}, fps=5.0)
    tracklets = track_video(VIDEO, records, embeddings, TrackerConfig(min_detections=3))
    assert [t.track_id for t in tracklets] == [f"{PREFIX}-t1"]
    assert [r.track_id for r, p in zip(records, people) if p == 1] == [""]
    with pytest.raises(WorkerError, match="7 detections but 6 embeddings"):
        track_video(VIDEO, records, embeddings.select(slice(0, 6)))
    with pytest.raises(WorkerError, match="max_gap_s must be >= 0"):
        TrackerConfig(max_gap_s=-1)
    with pytest.raises(WorkerError, match="max_scale_change must be >= 1"):
        TrackerConfig(max_scale_change=0.5)
    assert track_video(VIDEO, [], None) == []


def test_small_and_unsure_detector_boxes_are_dropped_before_pose_and_counted(shared_data: Path) -> None:
    import decord

    video = shared_data / "video" / "meva_school_G330_annotated.mp4"
    reader = decord.VideoReader(str(video), num_threads=1)
    frames = [DecodedFrame(i, i / 30, reader[i].asnumpy()) for i in (0, 300, 900)]
    task = VideoTask("meva", str(video), "gym")
    models = shared_data / "models"

    def detect(**options) -> tuple[list[float], list[float], int]:
        config = BackendConfig("yolox", str(models / "yolox_nano_416x416.onnx"),
                               str(models / "movenet_singlepose_lightning_int8.tflite"), **options)
        batch = FrameDetector(config).detect(task, 0.0, frames)
        assert len(batch.crops) == len(batch.records)
        return [float(r.bbox[3]) for r in batch.records], [r.det_score for r in batch.records], batch.dropped

    heights, scores, dropped = detect(min_box_height=0, min_score=0.3)
    assert dropped == 0 and min(scores) >= 0.3 and min(heights) < 48  # a crowded gym: many people far away
    tall, _, dropped = detect(min_box_height=48, min_score=0.3)
    assert min(tall) >= 48 and dropped == sum(h < 48 for h in heights) and len(tall) + dropped == len(heights)
    _, sure, _ = detect(min_box_height=0, min_score=0.6)
    assert min(sure) >= 0.6 and len(sure) == sum(s >= 0.6 for s in scores)


BAD_OPTIONS = [(["--min-box-height", "-1"], "min_box_height must be a number of pixels >= 0, got -1.0"),
               (["--min-score", "1.5"], "min_score must be a number in [0, 1], got 1.5"),
               (["--min-score", "high"], "invalid float value: 'high'")]


@pytest.mark.parametrize(("args", "expected"), BAD_OPTIONS, ids=[e for _, e in BAD_OPTIONS])
def test_bad_detection_thresholds_are_one_line_and_exit_2(tmp_path, capsys, args, expected) -> None:
    db = tmp_path / "db"
    assert main(["ingest", str(tmp_path), "--db", str(db), "--model", str(tmp_path / "ckpt"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and err[0].startswith("kpr ingest: error:")
    assert not db.exists()


def test_tracklet_thumbnail_is_a_crop_that_shows_the_whole_person() -> None:
    path = _walk(0, 0, 5, 0, 6)
    path[5] = (25.0, 0.0, 0.9, 110.0)  # farther from the camera: a smaller crop
    records, embeddings, _ = _scene({0: path}, fps=5.0)
    embeddings.visibility[1] = 1.0  # parts look visible, but an obstacle hides its legs: 6 of 17 joints seen
    records[1].keypoints[:6, 2] = 1.0
    for i in (0, 2, 3, 4, 5):
        records[i].keypoints[:, 2] = 1.0
    embeddings.visibility[5] = 1.0
    (tracklet,) = track_video(VIDEO, records, embeddings)
    assert tracklet.best_detection_id == records[0].detection_id  # whole, near and first among equals
