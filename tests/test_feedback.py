"""Relevance feedback: confirmed hits fused into the query per part, the query moved away from what rejected hits
share, rejected look-alikes pushed down, marked detections not shown again; through the store and through
`kpr search --same/--not`.

The store: person P (query seen from the front: lower body hidden), a look-alike L with P's upper body and other
legs, and random passers-by, in three cameras. P's back view in camera 1 shows only the lower body.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from kpr_model.distance import FeedbackWeights, ReIDEmbeddings, aggregate, exemplar_distance, fuse, rejection_penalty
from people_store import build_people_store, person_of
from pipelines.cli import main
from storage import (
    PersonSearch,
    SearchFilters,
    Store,
    StoreError,
    detection_row,
    detections_table,
    tracklet_row,
    tracklets_table,
)
from storage.feedback import Feedback, FeedbackSearch
from support import unit_rows

K, D = 4, 16
UPPER, LOWER = [0, 1], [2, 3]
OTHERS = 12
OTHER_CAMERAS = SearchFilters(exclude_cameras=["cam0"])  # the query's camera


def _person(parts: np.ndarray, visible: list[int], rng: np.random.Generator, noise: float) -> ReIDEmbeddings:
    """One view of a person: its parts with noise, visibility 1 on ``visible`` (else 0), the global vector the mean
    of the visible parts, as an occluded crop's global vector is."""
    seen = unit_rows(parts + noise * rng.standard_normal(parts.shape))
    visibility = np.zeros(K, np.float32)
    visibility[visible] = 1.0
    return ReIDEmbeddings(unit_rows(seen[visible].mean(axis=0))[None], seen[None], visibility[None])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The store of the module docstring, and the query: P's front view."""
    rng = np.random.default_rng(3)
    p = unit_rows(rng.standard_normal((K, D)))
    lookalike = p.copy()
    lookalike[LOWER] = unit_rows(rng.standard_normal((len(LOWER), D)))
    views = {  # detection id -> (camera, view)
        "p-front": (0, _person(p, UPPER, rng, 0.3)),
        "p-back": (1, _person(p, LOWER, rng, 0.05)),
        "p-legs": (2, _person(p, LOWER, rng, 0.05)),
        "p-full": (2, _person(p, UPPER + LOWER, rng, 0.35)),
        "l-1": (1, _person(lookalike, UPPER + LOWER, rng, 0.05)),
        "l-2": (2, _person(lookalike, UPPER + LOWER, rng, 0.05)),
        **{f"x-{i}": (1 + i % 2, _person(unit_rows(rng.standard_normal((K, D))), UPPER + LOWER, rng, 0.05))
           for i in range(OTHERS)},
    }
    store = _store(tmp_path_factory.mktemp("feedback") / "db", views)
    return {"db": Path(store.uri), "search": PersonSearch(store), "query": views["p-front"][1]}


def _store(folder: Path, views: dict[str, tuple[int, ReIDEmbeddings]]) -> Store:
    """A store of ``views`` (detection id -> (camera, view)), one video per camera, each detection its own
    tracklet."""
    store = Store.open(str(folder))
    for camera in sorted({c for c, _ in views.values()}):
        ids = [i for i, (c, _) in views.items() if c == camera]
        rows = [detection_row(det_id, f"video{camera}", f"cam{camera}", frame_index=n, timestamp=1_000.0 + n,
                              bbox=[0, 0, 32, 64], model_id="m", track_id=f"video{camera}-{det_id}",
                              thumbnail=b"\xff\xd8")
                for n, det_id in enumerate(ids)]
        video = {"video_id": f"video{camera}", "uri": f"/archive/cam{camera}.mp4", "camera_id": f"cam{camera}",
                 "model_id": "m"}
        store.write_video(video, detections_table(rows, ReIDEmbeddings.concat([views[i][1] for i in ids])))
    return store


def _ids(hits) -> list[str]:
    return [h.detection_id for h in hits]


def test_fusion_fills_the_parts_the_query_hid_and_leaves_parts_seen_nowhere_invisible():
    rng = np.random.default_rng(0)
    parts = unit_rows(rng.standard_normal((K, D)))
    front = _person(parts, UPPER, rng, 0.1)
    back = _person(parts, [2], rng, 0.1)
    fused = fuse(front, back)
    assert (fused.visibility[0] > 0).tolist() == [True, True, True, False]
    assert float(fused.parts[0, 2] @ back.parts[0, 2]) == pytest.approx(1.0, abs=1e-5)  # only the back view shows it
    assert float(fused.parts[0, 0] @ front.parts[0, 0]) == pytest.approx(1.0, abs=1e-5)
    assert fuse(front, back.select(slice(0, 0))) is front


def test_fusion_moves_away_from_the_look_several_rejected_hits_share_but_not_from_a_single_one():
    rng = np.random.default_rng(1)
    uniform, own = unit_rows(rng.standard_normal((2, K, D)))
    query = _person(unit_rows(uniform + own), UPPER + LOWER, rng, 0.0)
    rejected = ReIDEmbeddings.concat([_person(unit_rows(uniform + o), UPPER + LOWER, rng, 0.0)
                                      for o in unit_rows(rng.standard_normal((6, K, D)))])
    fused = fuse(query, rejected.select(slice(0, 0)), rejected)

    def alignment(embeddings: ReIDEmbeddings, direction: np.ndarray) -> np.ndarray:
        return np.einsum("kd,kd->k", embeddings.parts[0], direction)

    assert (alignment(fused, uniform) < alignment(query, uniform) - 0.05).all()  # away from the uniform they share
    assert (alignment(fused, own) > alignment(query, own)).all()  # towards what is the person's own
    single = fuse(query, rejected.select(slice(0, 0)), rejected.select(slice(0, 1)))
    np.testing.assert_array_equal(single.parts, query.parts)


def test_the_penalty_pushes_only_what_is_nearer_a_rejected_hit_than_the_query():
    penalty = rejection_penalty(np.array([0.5, 0.5, 0.9]), np.array([[0.2, 0.8, 1.0], [0.9, 0.7, 0.4]]), weight=2.0)
    assert penalty.tolist() == pytest.approx([0.6, 0.0, 1.0])
    assert rejection_penalty(np.array([0.5]), np.zeros((0, 1))).tolist() == [0.0]


def test_a_confirmed_back_view_finds_the_person_seen_only_from_behind(world):
    search, query = world["search"], world["query"]
    before = _ids(search.search(query, k=5, filters=OTHER_CAMERAS))
    after = _ids(FeedbackSearch(search, Feedback(same=("p-back",))).search(query, k=5, filters=OTHER_CAMERAS))
    assert before[0] != "p-legs"  # front and legs share no part: without the back view, no reason to rank it first
    assert after[0] == "p-legs"
    assert "p-back" not in after  # confirmed: part of the query now, not a new result


def test_the_confirmed_back_views_own_match_is_gathered_and_ranked_by_that_view(tmp_path):
    # P's front and back differ but for the shoes (a coat open in front, a backpack); the fused query is their mean,
    # nearest to passers-by who look like neither view but lie between them, so P's other back view is beyond its
    # few best candidates.
    rng = np.random.default_rng(5)
    front, back = unit_rows(rng.standard_normal((2, K, D)))
    back[-1] = front[-1]
    between = unit_rows(front + back)
    views = {"p-front": (0, _person(front, UPPER + LOWER, rng, 0.02)),
             "p-back": (1, _person(back, UPPER + LOWER, rng, 0.02)),
             "p-back-2": (2, _person(back, UPPER + LOWER, rng, 0.02)),
             **{f"x-{i}": (1 + i % 2, _person(between, UPPER + LOWER, rng, 0.12)) for i in range(6)}}
    search, query = PersonSearch(_store(tmp_path / "db", views)), views["p-front"][1]
    marks = Feedback(same=("p-back",))
    weights = FeedbackWeights()
    assert _ids(FeedbackSearch(search, marks, weights).search(query, k=1, filters=OTHER_CAMERAS)) == ["p-back-2"]
    fused_alone = FeedbackSearch(search, marks, replace(weights, exemplar=0.0), gather=False)
    assert _ids(fused_alone.search(query, k=1, filters=OTHER_CAMERAS)) != ["p-back-2"]
    not_gathered = FeedbackSearch(search, marks, weights, gather=False)
    assert _ids(not_gathered.search(query, k=1, filters=OTHER_CAMERAS)) != ["p-back-2"]


def test_a_confirmed_detection_brings_its_whole_tracklet(tmp_path):
    # The confirmed detection is its tracklet's first frame, upper body only, as the front-view query; the rest of the
    # tracklet shows the legs, the only part P's sighting on camera 2 shows.
    rng = np.random.default_rng(6)
    p = unit_rows(rng.standard_normal((K, D)))
    views = {"p-front": (0, _person(p, UPPER, rng, 0.05)), "p-legs": (2, _person(p, LOWER, rng, 0.05)),
             **{f"x-{i}": (2, _person(unit_rows(rng.standard_normal((K, D))), UPPER, rng, 0.05)) for i in range(4)}}
    store = _store(tmp_path / "db", views)
    entering = [_person(p, UPPER, rng, 0.05), *(_person(p, UPPER + LOWER, rng, 0.05) for _ in range(3))]
    ids = [f"p-walk-{n}" for n in range(len(entering))]
    rows = [detection_row(det_id, "video1", "cam1", frame_index=n, timestamp=2_000.0 + n, bbox=[0, 0, 32, 64],
                          model_id="m", track_id="walk", thumbnail=b"\xff\xd8") for n, det_id in enumerate(ids)]
    tracklet = tracklet_row("walk", "video1", "cam1", 2_000.0, 2_003.0, len(ids), ids[1], b"\xff\xd8", "m")
    embeddings = ReIDEmbeddings.concat(entering)
    store.write_video({"video_id": "video1", "uri": "/archive/cam1.mp4", "camera_id": "cam1", "model_id": "m"},
                      detections_table(rows, embeddings), tracklets_table([tracklet], aggregate(embeddings)))
    search, marks = PersonSearch(store), Feedback(same=("p-walk-0",))
    other_cameras = SearchFilters(exclude_cameras=["cam0", "cam1"])
    whole = FeedbackSearch(search, marks).search(views["p-front"][1], k=1, filters=other_cameras)
    alone = FeedbackSearch(search, marks, whole_tracklets=False).search(views["p-front"][1], k=1, filters=other_cameras)
    assert _ids(whole) == ["p-legs"] and _ids(alone) != ["p-legs"]


def test_the_nearest_view_distance_moves_towards_the_nearest_view_only_when_it_is_nearer():
    to_fused = np.array([0.5, 0.2, 0.8])
    to_views = np.array([[0.1, 0.9, 0.9], [0.7, 0.6, 0.4]])
    assert exemplar_distance(to_fused, to_views, weight=1.0).tolist() == pytest.approx([0.1, 0.2, 0.4])
    assert exemplar_distance(to_fused, to_views, weight=0.5).tolist() == pytest.approx([0.3, 0.2, 0.6])
    assert exemplar_distance(to_fused, to_views, weight=0.0).tolist() == pytest.approx(to_fused.tolist())


def test_a_rejected_look_alike_drops_below_the_person(world):
    search, query = world["search"], world["query"]
    before = _ids(search.search(query, k=6, filters=OTHER_CAMERAS))
    assert before.index("l-2") < before.index("p-full")  # the look-alike's upper body is the closer one
    after = _ids(FeedbackSearch(search, Feedback(rejected=("l-1",))).search(query, k=6, filters=OTHER_CAMERAS))
    assert after[0] == "p-full"
    assert "l-1" not in after and ("l-2" not in after or after.index("l-2") > 0)


def test_a_global_only_search_takes_feedback_on_the_whole_body_vectors(world):
    search = FeedbackSearch(world["search"], Feedback(same=("p-full",), rejected=("l-1",)))
    hits = search.search(world["query"], k=8, filters=OTHER_CAMERAS, global_only=True)
    assert hits and not {"p-full", "l-1"} & set(_ids(hits))
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)


def test_people_leave_out_the_marked_persons_tracklets(world):
    people = FeedbackSearch(world["search"], Feedback(same=("p-back",), rejected=("l-1",))).people(world["query"], k=20)
    shown = {p.track_id for p in people}
    assert shown and not shown & {"video1-p-back", "video1-l-1"}


def test_unknown_and_contradictory_marks_are_refused(world):
    with pytest.raises(StoreError, match="unknown detection id 'nope'"):
        FeedbackSearch(world["search"], Feedback(same=("p-back",), rejected=("nope",)))
    with pytest.raises(StoreError, match="marked both"):
        Feedback(same=("l-1",), rejected=("l-1",))


def _listed(capsys) -> list[str]:
    """The detection ids `kpr search --detections` printed, best first."""
    lines = capsys.readouterr().out.strip().splitlines()
    return [line.split()[-1] for line in lines[1:] if not line.startswith("----")]


def test_kpr_search_takes_same_and_not_marks(world, capsys):
    query = ["search", "--db", str(world["db"]), "--detection", "p-front", "--detections", "-k", "3"]
    assert main(query) == 0
    assert _listed(capsys)[0] == "l-1"
    assert main([*query, "--same", "p-back", "--not", "l-1"]) == 0
    listed = _listed(capsys)
    assert listed[0] == "p-legs" and not {"p-back", "l-1"} & set(listed)
    assert main([*query[:-3], "--same", "p-back", "--not", "l-1"]) == 0  # the list of people
    assert "video1-l-1" not in capsys.readouterr().out


@pytest.mark.parametrize(("marks", "expected"), [
    (["--same", "p-back", "--not", "nope"], "kpr search: error: unknown detection id 'nope' among the marked hits"),
    (["--same", "l-1", "--not", "l-1"], "kpr search: error: detection 'l-1' is marked both"),
])
def test_a_bad_mark_is_one_line_and_exit_2(world, capsys, marks, expected):
    assert main(["search", "--db", str(world["db"]), "--detection", "p-front", *marks]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected)


def test_the_benchmark_scores_the_confirmed_first_then_the_new_results():
    from bench.feedback import average_precision, score

    assert average_precision([True, False, True], total=2) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([False, True], total=5) == pytest.approx(0.5 / 2)  # depth 2 bounds what can be found
    scores = score(confirmed=[True, True], new=[False, True], total=4, depth=100)
    assert scores.average_precision == pytest.approx((1 + 1 + 3 / 4) / 4)
    assert scores.recall_at_50 == pytest.approx(3 / 4)
    assert scores.new_average_precision == pytest.approx(0.5 / 2)


def test_the_benchmark_measures_a_labelled_stores_tracklets_against_the_other_cameras(tmp_path, capsys):
    from bench.feedback import main as bench, measure_store, parse_args

    store = build_people_store(tmp_path / "db")  # person 0 in 3 tracklets on cam0-cam2 (3, 60, 4 detections)
    result = measure_store(store, person_of, parse_args(["--store", store.uri, "--marks", "2"]), log=lambda _: None)
    assert result["queries"] == 3  # person 0's tracklets: nobody else is seen by two cameras
    assert result["relevant_rows_mean"] == pytest.approx((64 + 7 + 63) / 3, abs=0.05)  # the other cameras' rows only
    assert [r["map"] for r in result["rounds"]] == [1.0, 1.0, 1.0]  # the store's people are far apart
    assert set(result["ablations"]) == {"single_query", "detections", "no_gather", "no_nearest_view", "no_negative",
                                        "no_penalty", "exclude_only"}
    assert bench(["--store", store.uri, "--output", "-"]) == 2  # no annotation sidecars beside its videos
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench.feedback: error: no annotation sidecar beside")
