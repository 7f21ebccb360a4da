"""The calibrated "no close match" distance: measured on labelled tracklets, recorded with the model, shown by search."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from people_store import LONG_TRACK, QUERY_TRACK, TRUE_TRACK, build_people_store, person_of
from pipelines.calibrate import NO_CLOSE_MATCH, calibrate, separating_threshold
from pipelines.cli import main
from pipelines.web.app import create_app


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    store = build_people_store(tmp_path_factory.mktemp("calibrated") / "db")
    return store, calibrate(store, person_of)


def test_the_threshold_is_the_distance_that_best_separates_same_from_different_pairs():
    split = separating_threshold(np.array([0.1, 0.3, 0.2, 0.9]), np.array([0.5, 0.6, 0.8, 1.2]))
    assert (split.distance, split.same_at_or_below, split.different_at_or_below) == (0.3, 0.75, 0.0)
    assert (split.same_pairs, split.different_pairs) == (4, 4)


def test_calibration_is_recorded_with_the_model_and_separates_the_labelled_tracklets(calibrated):
    store, thresholds = calibrated
    assert set(thresholds) == {"kpr", "global"}
    kpr = thresholds["kpr"]
    assert kpr.same_pairs == 6 and kpr.same_at_or_below == 1.0 and kpr.different_at_or_below == 0.0
    record = store.model()
    assert record["model_id"] == "people-model" and record[NO_CLOSE_MATCH]["kpr"]["distance"] == kpr.distance


def test_search_marks_the_people_beyond_the_calibrated_distance(calibrated, tmp_path, capsys):
    store, thresholds = calibrated
    assert main(["search", "--db", store.uri, "--tracklet", QUERY_TRACK, "-k", "4", "--html", str(tmp_path / "p.html")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split()[-1] == LONG_TRACK and lines[2].split()[-1] == TRUE_TRACK
    assert lines[3].startswith("---- no close match below") and f"{thresholds['kpr'].distance:.4f}" in lines[3]
    assert len(lines) == 6
    assert (tmp_path / "p.html").read_text().count("no close match</span>") == 2
    answer = TestClient(create_app(store.uri)).post("/api/search", data={"track_id": QUERY_TRACK, "k": "4"}).json()
    assert answer["no_close_match_above"] == pytest.approx(thresholds["kpr"].distance)
    far = [p["distance"] > answer["no_close_match_above"] for p in answer["people"]]
    assert far == [False, False, True, True]


def test_kpr_calibrate_needs_a_labelled_archive(calibrated, capsys):
    store, _ = calibrated
    assert main(["calibrate", "--db", store.uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no annotation sidecar beside" in err[0] and "kpr synth" in err[0]
