"""What a user sees of the global identities on a real LanceDB store: `kpr list identities`, `kpr info` and
`kpr search --identity` (the identity's own sightings first, then new candidates; each hit's identity)."""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from people_store import LONG_TRACK, QUERY_TRACK, T0, TRUE_TRACK, build_people_store
from pipelines.cli import main
from storage import Store
from storage.identities import Identities, LinkedTracklet, MadeBy

# The people store's tracklets of video1 besides the long one: one person each, each their own identity.
OTHERS = ("video1-p1", "video1-p2")


def link_people_store(db) -> dict[str, str]:
    """Write identities into the people store as `kpr link` would: the query person's two stored tracklets (cam0 and
    cam1) as one identity, each other stored tracklet as its own. Returns the identity id of each tracklet."""
    store = Store.open(str(db), create=False)
    rows = {row["track_id"]: row for row in store.list_tracklets().to_pylist()}
    groups = [(QUERY_TRACK, LONG_TRACK), *((track,) for track in OTHERS)]
    linked = Identities.open(str(db))
    linked.replace([[LinkedTracklet(t, rows[t]["camera_id"], rows[t]["video_id"], rows[t]["t_start"], rows[t]["t_end"],
                                    0.9 if len(group) > 1 else 1.0) for t in group] for group in groups],
                   MadeBy("people-model", "run-1", None))
    return {t["track_id"]: row["identity_id"] for row in linked.rows(["tracklets"]) for t in row["tracklets"]}


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """The people store with identities; yields (db, identity of each linked tracklet)."""
    db = tmp_path_factory.mktemp("identity_views") / "db"
    build_people_store(db)
    return db, link_people_store(db)


def _table(capsys) -> list[list[str]]:
    """The lines of a printed table, split into cells on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.strip().splitlines()]


def test_list_identities_shows_one_row_per_person_with_its_tracklets_cameras_and_times(linked, capsys):
    db, identity = linked
    assert main(["list", "--db", str(db), "identities"]) == 0
    header, *rows, hint = _table(capsys)
    assert header == ["identity", "tracklets", "cameras", "detections", "first seen (UTC)", "last seen (UTC)",
                      "best tracklet", "confidence"]
    walker = identity[QUERY_TRACK]
    assert rows[0] == [walker, "2", "cam0,cam1", "63", "2026-01-01 00:00:00", "2026-01-01 01:02:00", LONG_TRACK,
                       "0.900"]
    assert [row[0] for row in rows[1:]] == [identity[t] for t in OTHERS] and hint[0].endswith("--identity IDENTITY")
    # Filters as for the other listings: a camera, a time window, a fewest number of detections; then a page.
    assert main(["list", "--db", str(db), "--identities", "--camera", "cam0"]) == 0  # --identities: the same
    assert [row[0] for row in _table(capsys)[1:-1]] == [walker]
    assert main(["list", "--db", str(db), "identities", "--since", "2026-01-01T00:15", "--until", "2026-01-01T00:25"]) == 0
    assert [row[0] for row in _table(capsys)[1:-1]] == [identity["video1-p2"]]
    assert main(["list", "--db", str(db), "identities", "--min-detections", "10"]) == 0
    assert [row[0] for row in _table(capsys)[1:-1]] == [walker]
    assert main(["list", "--db", str(db), "identities", "--limit", "1", "--offset", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith(identity["video1-p1"]) and lines[2] == "1 more identities: use --offset 2 or a larger --limit"


def test_list_identities_as_json_with_their_thumbnails(linked, tmp_path, capsys):
    db, identity = linked
    folder = tmp_path / "people"
    assert main(["list", "--db", str(db), "identities", "--json", "--thumbnails", str(folder)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert (listing["listing"], listing["linked"], listing["total"]) == ("identities", True, 3)
    walker = listing["rows"][0]
    assert walker["identity_id"] == identity[QUERY_TRACK] and walker["cameras"] == ["cam0", "cam1"]
    assert walker["first_seen_utc"] == "2026-01-01T00:00:00Z" and walker["confidence"] == pytest.approx(0.9)
    pixels = cv2.imdecode(np.frombuffer(open(walker["thumbnail"], "rb").read(), np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None and walker["thumbnail"].endswith(f"{identity[QUERY_TRACK]}.jpg")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{identity[t]}.jpg" for t in (QUERY_TRACK, *OTHERS))


def test_a_store_never_linked_says_so_in_one_line(tmp_path, capsys):
    db = tmp_path / "db"
    build_people_store(db)
    assert main(["list", "--db", str(db), "identities"]) == 0
    assert capsys.readouterr().out.strip() == f"no identities yet: run kpr link --db {db}"
    assert main(["list", "--db", str(db), "identities", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["linked"] is False
    assert main(["info", "--db", str(db)]) == 0
    assert "identities:  none yet (kpr link" in capsys.readouterr().out


def test_info_counts_the_identities_and_those_seen_by_more_than_one_camera(linked, capsys):
    db, _ = linked
    assert main(["info", "--db", str(db)]) == 0
    assert "identities:  3, 1 seen by more than one camera" in capsys.readouterr().out
    assert main(["info", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["identities"] == {"identities": 3, "across_cameras": 1}


def _people_lines(capsys) -> tuple[list[str], list[list[str]]]:
    """The header cells and the cells of each line of a printed list of people (separator lines kept whole)."""
    header, *lines = capsys.readouterr().out.strip().splitlines()
    return re.split(r"\s{2,}", header.strip()), [[line] if line.startswith("----") else re.split(r"\s{2,}", line.strip())
                                                 for line in lines]


def test_identity_search_lists_its_own_tracklets_first_then_the_people_it_does_not_hold(linked, capsys):
    db, identity = linked
    walker = identity[QUERY_TRACK]
    assert main(["search", "--db", str(db), "--identity", walker, "-k", "3"]) == 0
    header, lines = _people_lines(capsys)
    assert header[-2:] == ["track", "identity"]
    assert {line[-2] for line in lines[:2]} == {QUERY_TRACK, LONG_TRACK} and all(line[-1] == walker for line in lines[:2])
    assert lines[2][0].startswith("---- above: the identity's 2 tracklet(s)")
    # The first new candidate is the person's third passage, which linking has not joined to them (no identity).
    new = lines[3:]
    assert len(new) == 3 and new[0][-2:] == [TRUE_TRACK, "-"]
    assert not {QUERY_TRACK, LONG_TRACK} & {line[-2] for line in new}
    # Recorded in a case, the search reads as the identity's.
    assert main(["search", "--db", str(db), "--identity", walker, "-k", "1", "--case", "walker"]) == 0
    capsys.readouterr()
    assert main(["case", "show", "walker", "--db", str(db)]) == 0
    assert f"query    identity {walker}; k=1" in capsys.readouterr().out


def test_every_search_shows_the_identity_of_each_hit_in_a_linked_store(linked, capsys):
    db, identity = linked
    assert main(["search", "--db", str(db), "--tracklet", QUERY_TRACK, "-k", "5"]) == 0
    header, lines = _people_lines(capsys)
    assert header[-1] == "identity"
    shown = {line[-2]: line[-1] for line in lines}
    assert shown[LONG_TRACK] == identity[QUERY_TRACK] and shown[TRUE_TRACK] == "-"
    assert main(["search", "--db", str(db), "--tracklet", QUERY_TRACK, "-k", "5", "--detections"]) == 0
    header, lines = _people_lines(capsys)
    assert header[5:7] == ["track", "identity"] and {line[6] for line in lines if line[5] == LONG_TRACK} == {
        identity[QUERY_TRACK]}
    assert main(["search", "--db", str(db), "--tracklet", QUERY_TRACK, "-k", "5", "--group"]) == 0
    assert f"track {LONG_TRACK} (identity {identity[QUERY_TRACK]}): best" in capsys.readouterr().out


@pytest.mark.parametrize("extra, expected", [
    (["--identity", "person-0000000000000000"], "no identity 'person-0000000000000000' in store"),
    (["--identity", "{walker}", "--tracklet", QUERY_TRACK], "not allowed with argument"),
    (["--identity", "{walker}", "--detections"], "an identity search lists people"),
])
def test_identity_search_mistakes_are_one_line(linked, capsys, extra, expected):
    db, identity = linked
    args = [a.format(walker=identity[QUERY_TRACK]) for a in extra]
    assert main(["search", "--db", str(db), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kpr search: error: ") and expected in err[0], err


def _client(db):
    from fastapi.testclient import TestClient

    from pipelines.web.app import create_app

    return TestClient(create_app(str(db)))


def test_the_web_api_lists_identities_shows_one_and_searches_for_it(linked):
    db, identity = linked
    client = _client(db)
    walker = identity[QUERY_TRACK]
    page = client.get("/api/identities", params={"limit": 2}).json()
    assert page["linked"] and page["total"] == 3 and page["more"] and page["identities"][0]["identity_id"] == walker
    assert client.get("/api/identities", params={"camera": "cam0"}).json()["total"] == 1
    thumbnail = client.get(page["identities"][0]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    shown = client.get(f"/api/identities/{walker}").json()
    assert [t["track_id"] for t in shown["tracklets"]] == [QUERY_TRACK, LONG_TRACK]
    assert [c["camera_id"] for c in shown["cameras"]] == ["cam0", "cam1"] and shown["cameras"][0]["first_utc"] == (
        "2026-01-01 00:00:00")
    assert shown["journey"] == {"query": LONG_TRACK, "same": [QUERY_TRACK]}
    assert [event["change"] for event in shown["history"]] == ["created"]
    journey = client.get("/api/journey", params={"query": LONG_TRACK, "same": [QUERY_TRACK]}).json()
    assert {s["camera_id"] for s in journey["sightings"]} == {"cam0", "cam1"}
    found = client.post("/api/search", data={"identity_id": walker, "k": "2", "case": "web walker"}).json()
    assert client.get("/api/case", params={"case": "web walker"}).json()["query"]["identity_id"] == walker
    assert found["query"] == {"kind": "identity", "identity_id": walker, "own": 2}
    people = found["people"]
    assert [p["identity_id"] for p in people[:2]] == [walker, walker] and people[2]["track_id"] == TRUE_TRACK
    assert people[2]["identity_id"] is None and people[0]["best"]["identity_id"] == walker
    missing = client.get("/api/identities/person-0000000000000000")
    assert missing.status_code == 404 and "no identity 'person-0000000000000000'" in missing.json()["error"]


def test_the_web_api_splits_and_merges_identities_by_hand(tmp_path):
    db = tmp_path / "db"
    build_people_store(db)
    identity = link_people_store(db)
    client = _client(db)
    walker = identity[QUERY_TRACK]
    people = client.post("/api/search", data={"track_id": LONG_TRACK}).json()["people"]
    assert {p["track_id"]: p["identity_id"] for p in people}[QUERY_TRACK] == walker
    split = client.post(f"/api/identities/{walker}/split", data={"track_id": QUERY_TRACK, "note": "two people"}).json()
    kept, new = split["kept"], split["new"]
    assert kept["identity_id"] == walker and [t["track_id"] for t in kept["tracklets"]] == [LONG_TRACK]
    assert [t["track_id"] for t in new["tracklets"]] == [QUERY_TRACK] and new["identity_id"] != walker
    assert client.get("/api/identities").json()["total"] == 4
    # The searches name the new identity at once (the server reads the identities again after an edit).
    people = client.post("/api/search", data={"track_id": LONG_TRACK}).json()["people"]
    assert {p["track_id"]: p["identity_id"] for p in people}[QUERY_TRACK] == new["identity_id"]
    assert kept["history"][-1]["change"] == "split" and kept["history"][-1]["note"] == "two people"
    merged = client.post("/api/identities/merge", data={"identity_id": [walker, new["identity_id"]]}).json()
    assert {t["track_id"] for t in merged["tracklets"]} == {QUERY_TRACK, LONG_TRACK}
    assert client.get("/api/identities").json()["total"] == 3
    for response in (client.post(f"/api/identities/{walker}/split", data={"track_id": TRUE_TRACK}),
                     client.post("/api/identities/merge", data={"identity_id": walker}),
                     client.post("/api/identities/merge", data={"identity_id": [walker, "person-0000000000000000"]})):
        assert response.status_code in (400, 404) and "\n" not in response.json()["error"], response.json()
    assert client.get("/api/identities").json()["total"] == 3


def test_the_web_api_of_a_store_never_linked_says_so(tmp_path):
    db = tmp_path / "db"
    build_people_store(db)
    client = _client(db)
    assert client.get("/api/identities").json() == {"linked": False, "identities": [], "offset": 0, "limit": 24,
                                                     "total": 0, "more": False}
    people = client.post("/api/search", data={"track_id": QUERY_TRACK}).json()["people"]
    assert people and all(p["identity_id"] is None for p in people)
