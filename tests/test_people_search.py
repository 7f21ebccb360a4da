"""Top-k people (tracklets) instead of top-k detections: one long passage no longer fills the results."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from people_store import LONG_LENGTH, LONG_SPAN, LONG_TRACK, QUERY_TRACK, TRUE_LENGTH, TRUE_TRACK, build_people_store
from pipelines.cli import main
from pipelines.web.app import create_app
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


# --- what a user sees: kpr search, its HTML page and the web app list people, best first, with date and time ---

@pytest.fixture(scope="module")
def people_db(search) -> str:
    return search.store.uri


def test_kpr_search_lists_distinct_people_with_the_true_match_and_detections_on_request(people_db, capsys):
    assert main(["search", "--db", people_db, "--tracklet", QUERY_TRACK, "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "distance", "camera", "time", "span", "(UTC)", "matched", "detection", "track"]
    rows = [line.split() for line in lines[1:]]
    assert [row[-1] for row in rows][:2] == [LONG_TRACK, TRUE_TRACK] and len({row[-1] for row in rows}) == 3
    assert rows[0][3:6] == ["2026-01-01", "01:00:00..01:02:00", f"{LONG_LENGTH}/{LONG_LENGTH}"]
    assert main(["search", "--db", people_db, "--tracklet", QUERY_TRACK, "-k", "3", "--detections"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert len(rows) == 3 and {row[6] for row in rows} == {LONG_TRACK}  # rank distance camera date time frame track


def test_the_html_page_shows_person_cards_with_date_time_span_and_matches(people_db, tmp_path, capsys):
    page = tmp_path / "people.html"
    assert main(["search", "--db", people_db, "--tracklet", QUERY_TRACK, "-k", "3", "--html", str(page)]) == 0
    text = page.read_text()
    assert text.count("<figure class=''") == 3 and f"track {TRUE_TRACK}" in text
    assert f"2026-01-01 01:00:00..01:02:00 UTC<br>{LONG_LENGTH} of {LONG_LENGTH} detections matched" in text
    assert "people (tracklets)" in text


def test_the_web_app_answers_person_cards_with_date_and_time(people_db):
    client = TestClient(create_app(people_db))
    answer = client.post("/api/search", data={"track_id": QUERY_TRACK, "k": "3"}).json()
    assert answer["by"] == "person" and answer["count"] == 3
    people = answer["people"]
    assert [p["track_id"] for p in people[:2]] == [LONG_TRACK, TRUE_TRACK] and [p["rank"] for p in people] == [1, 2, 3]
    assert people[0]["span_utc"] == "2026-01-01 01:00:00..01:02:00" and people[0]["matched"] == LONG_LENGTH
    assert people[1]["best"]["time_utc"].startswith("2026-01-01 02:00:0")
    assert client.get(people[1]["best"]["thumbnail"]).content[:2] == b"\xff\xd8"
    detections = client.post("/api/search", data={"track_id": QUERY_TRACK, "k": "3", "detections": "true"}).json()
    assert detections["by"] == "detection" and {h["track_id"] for h in detections["hits"]} == {LONG_TRACK}
