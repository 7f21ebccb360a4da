"""The per-video tracker: people crossing keep their identities, gaps are measured in seconds, ids are stable."""
from __future__ import annotations

import numpy as np
import pytest

from kpr_model.embeddings import ReIDEmbeddings
from workers.errors import WorkerError
from workers.records import DetectionRecord, detection_id
from workers.track import TrackerConfig, track_video

DIM, PARTS = 16, 4
VIDEO = "0123456789abcdef-video"
PREFIX = VIDEO[:12]


def _appearances(people: int, seed: int = 0) -> np.ndarray:
    """One unit appearance vector per person, pairwise (nearly) orthogonal."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return basis[:people]


def _scene(paths: dict[int, list[tuple[float, float, float] | None]], fps: float, seed: int = 1):
    """Detections of people following ``paths`` (per frame: (x, y, det_score) or None when unseen), in frame order.

    Returns the records, their embeddings (each person's appearance + small noise) and each record's true person.
    """
    rng = np.random.default_rng(seed)
    looks = _appearances(len(paths))
    records, people, embs = [], [], []
    frames = max(len(path) for path in paths.values())
    for frame in range(frames):
        for ordinal, (person, path) in enumerate(paths.items()):
            seen = path[frame] if frame < len(path) else None
            if seen is None:
                continue
            x, y, score = seen
            records.append(DetectionRecord(
                detection_id(VIDEO, frame, ordinal), frame, 1_000.0 + frame / fps, np.array([x, y, 60.0, 150.0], np.float32),
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
    motion_only = TrackerConfig(iou_weight=1.0, max_appearance_distance=2.0, reid_distance=0.0)
    records, embeddings, people = _scene(_meet_and_turn_back(), fps=5.0)
    track_video(VIDEO, records, embeddings, motion_only)
    assert _identity_report(records, people)[0] < 1.0


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
    assert track_video(VIDEO, [], None) == []
