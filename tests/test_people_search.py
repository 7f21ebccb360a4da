"""Top-k people (tracklets) instead of top-k detections: one long passage no longer fills the results."""
from __future__ import annotations

import pytest

from people_store import LONG_LENGTH, LONG_SPAN, LONG_TRACK, QUERY_TRACK, TRUE_LENGTH, TRUE_TRACK, build_people_store
from storage import PersonSearch, SearchFilters


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> PersonSearch:
    return PersonSearch(build_people_store(tmp_path_factory.mktemp("people") / "db"))


def test_one_long_tracklet_fills_the_top_detections_but_not_the_top_people(search):
    detections = search.by_tracklet(QUERY_TRACK, k=10)
    assert {h.track_id for h in detections} == {LONG_TRACK}
    query, filters = search.tracklet_query(QUERY_TRACK)
    people = search.people(query, k=5, filters=filters)
    assert len(people) == 5 and len({(p.track_id, p.best.detection_id) for p in people}) == 5
    assert [p.track_id for p in people[:2]] == [LONG_TRACK, TRUE_TRACK]
    assert [p.distance for p in people] == sorted(p.distance for p in people)
    assert people[0].best.detection_id == detections[0].detection_id
    assert QUERY_TRACK not in {p.track_id for p in people} and "cam0" not in {p.camera_id for p in people}


def test_a_person_has_its_time_span_and_how_many_of_its_detections_matched(search):
    query, filters = search.tracklet_query(QUERY_TRACK)
    found = search.people(query, k=10, filters=filters)
    people = {p.track_id: p for p in found}
    long, true = people[LONG_TRACK], people[TRUE_TRACK]
    assert (long.t_start, long.t_end) == LONG_SPAN and long.matched == long.detections == LONG_LENGTH
    assert true.matched == true.detections == TRUE_LENGTH and true.t_end - true.t_start == TRUE_LENGTH - 1
    untracked = [p for p in found if p.track_id is None]
    assert len(untracked) == 3 and all(p.matched == p.detections == 1 and p.t_start == p.t_end for p in untracked)


def test_a_camera_filter_still_reaches_other_people_than_the_long_passage(search):
    query, filters = search.detection_query("video0-0-0", filters=SearchFilters(cameras=["cam1"]))
    people = search.people(query, k=3, filters=filters)
    assert people[0].track_id == LONG_TRACK and {p.track_id for p in people[1:]} == {"video1-p1", "video1-p2"}
    assert search.people(query, k=3, filters=filters, candidates=1)[0].matched == LONG_LENGTH


def test_the_people_pool_respects_the_candidate_bound(tmp_path_factory):
    bounded = PersonSearch(build_people_store(tmp_path_factory.mktemp("bounded") / "db"), filtered_candidates=10,
                           max_candidates=10)
    query, filters = bounded.tracklet_query(QUERY_TRACK)
    people = bounded.people(query, k=5, filters=filters)
    assert [p.track_id for p in people] == [LONG_TRACK] and people[0].matched == 10
