"""Linking tracklets into identities: each constraint keeps apart two people that appearance alone would merge,
the transit window of a cameras file, the same identities whatever the input order, and the benchmark's scores."""
from __future__ import annotations

import numpy as np
import pytest

from kpr_model.distance import ReIDEmbeddings, kpr_distance, paired_kpr_distance
from people_store import build_people_store, person_of
from pipelines.calibrate import calibrate
from workers.cameras import read_cameras
from workers.errors import CamerasError
from workers.link import (GLOBAL_DISTANCE, LinkSettings, Prior, Topology, Tracklets, approximate_neighbours,
                         link_tracklets, nearest_pairs)

DIM, PARTS = 16, 4
SETTINGS = LinkSettings(threshold=0.5, neighbours=5)


def _looks(people: list[int], seed: int = 0) -> ReIDEmbeddings:
    """Aggregated embeddings of tracklets of ``people`` (one appearance per person, a little noise per tracklet)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(people) + 1, PARTS + 1, DIM))
    looks = centres[people] + 0.02 * rng.standard_normal((len(people), PARTS + 1, DIM))
    looks /= np.linalg.norm(looks, axis=-1, keepdims=True)
    return ReIDEmbeddings(looks[:, 0].astype(np.float32), looks[:, 1:].astype(np.float32),
                          np.ones((len(people), PARTS), np.float32))


def _tracklets(rows: list[tuple[str, str, float, float, int]], seed: int = 0) -> Tracklets:
    """Tracklets from (video, camera, start, end, person) rows, named t0, t1, ..."""
    return Tracklets([f"t{i}" for i in range(len(rows))], [r[0] for r in rows], [r[1] for r in rows],
                     np.array([r[2] for r in rows]), np.array([r[3] for r in rows]), _looks([r[4] for r in rows], seed))


def _together(linking, first: int, second: int) -> bool:
    return bool(linking.identity[first] == linking.identity[second])


def test_one_look_across_videos_is_one_identity_and_different_looks_are_not():
    tracklets = _tracklets([("v1", "a", 0, 10, 0), ("v2", "b", 100, 110, 0), ("v3", "a", 500, 510, 1)])
    linking = link_tracklets(tracklets, None, SETTINGS)
    assert _together(linking, 0, 1) and not _together(linking, 0, 2)
    assert linking.identities == 2 and 0 < linking.confidence[0] <= 1 and linking.confidence[2] == 1.0


def test_two_tracklets_of_one_video_at_once_stay_apart_however_alike_and_a_lost_and_found_one_links():
    at_once = _tracklets([("v1", "a", 0, 10, 0), ("v1", "a", 5, 30, 0)])
    assert not _together(link_tracklets(at_once, None, LinkSettings(0.5, 5, overlap=False)), 0, 1)
    assert _together(link_tracklets(at_once, None, LinkSettings(0.5, 5, same_video=False, overlap=False)), 0, 1)
    lost_and_found = _tracklets([("v1", "a", 0, 10, 0), ("v1", "a", 20, 30, 0)])
    assert _together(link_tracklets(lost_and_found, None, SETTINGS), 0, 1)


def test_one_person_is_not_on_two_cameras_at_once_unless_they_see_the_same_place():
    tracklets = _tracklets([("v1", "a", 0, 10, 0), ("v2", "b", 5, 15, 0)])
    assert not _together(link_tracklets(tracklets, None, SETTINGS), 0, 1)
    assert _together(link_tracklets(tracklets, None, LinkSettings(0.5, 5, overlap=False)), 0, 1)
    shared = Topology({("a", "b"): (0.0, 10.0)})
    assert _together(link_tracklets(tracklets, shared, SETTINGS), 0, 1)


@pytest.mark.parametrize("start, linked", [(15.0, False), (60.0, True), (500.0, False)])
def test_a_gap_outside_the_transit_window_is_no_link(start, linked):
    tracklets = _tracklets([("v1", "a", 0, 10, 0), ("v2", "b", start, start + 10, 0)])
    topology = Topology({("a", "b"): (30.0, 120.0)})
    assert _together(link_tracklets(tracklets, topology, SETTINGS), 0, 1) is linked
    assert _together(link_tracklets(tracklets, topology, LinkSettings(0.5, 5, transit=False)), 0, 1)
    assert _together(link_tracklets(tracklets, topology, LinkSettings(0.5, 5, direct_moves=False)), 0, 1) is (start > 30)


def test_cameras_not_connected_link_only_through_others():
    tracklets = _tracklets([("v1", "a", 0, 10, 0), ("v3", "c", 100, 110, 0)])
    topology = Topology({("a", "b"): (30.0, 120.0), ("b", "c"): (30.0, 120.0)})
    assert not _together(link_tracklets(tracklets, topology, SETTINGS), 0, 1)
    assert _together(link_tracklets(tracklets, topology, LinkSettings(0.5, 5, direct_moves=False)), 0, 1)
    through = _tracklets([("v1", "a", 0, 10, 0), ("v3", "c", 100, 110, 0), ("v2", "b", 50, 60, 0)])
    linking = link_tracklets(through, topology, SETTINGS)
    assert _together(linking, 0, 1) and _together(linking, 0, 2)


def test_groups_holding_a_forbidden_pair_are_not_merged():
    # t0 and t2 are one video's two people; t1 looks like both: it joins one of them, never both.
    rows = [("v1", "a", 0, 10, 0), ("v2", "b", 100, 110, 0), ("v1", "a", 0, 10, 0)]
    linking = link_tracklets(_tracklets(rows), None, LinkSettings(1.0, 5))
    assert not _together(linking, 0, 2) and (_together(linking, 0, 1) or _together(linking, 1, 2))


def test_the_same_tracklets_in_any_order_give_the_same_identities():
    rows = [("v1", "a", 0, 10, p % 3) for p in range(3)] + [(f"v{p + 2}", "b", 100 + p, 130, p % 3) for p in range(6)]
    tracklets = _tracklets(rows, seed=3)
    base = link_tracklets(tracklets, None, SETTINGS)
    order = np.random.default_rng(1).permutation(len(tracklets))
    shuffled = Tracklets([tracklets.track_ids[i] for i in order], [tracklets.video_ids[i] for i in order],
                         [tracklets.camera_ids[i] for i in order], tracklets.t_start[order], tracklets.t_end[order],
                         tracklets.embeddings.select(order))
    again = link_tracklets(shuffled, None, SETTINGS)
    assert np.array_equal(again.identity, base.identity[order])
    assert np.array_equal(again.confidence, base.confidence[order])


def test_a_tracklet_that_shows_no_body_part_links_to_nothing():
    tracklets = _tracklets([("v1", "a", 0, 10, 0), ("v2", "b", 100, 110, 0), ("v3", "a", 500, 510, 0)])
    tracklets.embeddings.visibility[2] = 0.1  # a sliver at the frame's edge: no part seen
    linking = link_tracklets(tracklets, None, SETTINGS)
    assert _together(linking, 0, 1) and linking.identities == 2 and linking.confidence[2] == 0.0
    assert link_tracklets(tracklets, None, LinkSettings(0.5, 5, min_visibility=0.0)).identities == 1


def test_hand_edits_replayed_in_order_give_what_stays_together_and_what_stays_apart():
    merged = Prior.from_edits([("merge", [["a", "b"]]), ("merge", [["b", "c"]])])
    assert merged.together == [["a", "b", "c"]] and merged.apart == []
    split = Prior.from_edits([("merge", [["a", "b", "c"]]), ("split", [["a"], ["b", "c"]])])
    assert split.together == [["b", "c"]] and split.apart == [{"a": 0, "b": 1, "c": 1}]
    # A later merge of a and b undoes the part of the split it contradicts: c stays apart from both.
    undone = Prior.from_edits([("split", [["a"], ["b", "c"]]), ("merge", [["a", "b"]])])
    assert undone.together == [["a", "b"]] and undone.apart == []
    partly = Prior.from_edits([("split", [["a", "d"], ["b", "c"]]), ("merge", [["a", "b"]])])
    assert partly.apart == [{"d": 0, "b": 1, "c": 1}]


def test_a_hand_merge_joins_unlike_tracklets_and_a_hand_split_keeps_alike_ones_apart():
    tracklets = _tracklets([("v1", "a", 0, 10, 0), ("v2", "b", 100, 110, 1), ("v3", "a", 500, 510, 0)])
    assert _together(link_tracklets(tracklets, None, SETTINGS, Prior([["t0", "t1"]])), 0, 1)
    kept_apart = link_tracklets(tracklets, None, SETTINGS, Prior(apart=[{"t0": 0, "t2": 1}]))
    assert not _together(kept_apart, 0, 2) and kept_apart.identities == 3
    # Both: t1 is with t0 by hand, t2 (t0's look) stays apart from that group.
    both = link_tracklets(tracklets, None, SETTINGS, Prior([["t0", "t1"]], [{"t1": 0, "t2": 1}]))
    assert _together(both, 0, 1) and not _together(both, 0, 2)


def test_an_incremental_run_adds_new_tracklets_to_existing_identities_and_never_merges_two_of_them():
    # People 0 and 1 are known identities; new tracklets: one of each, one of a new person 2, and one of person 0
    # that the prior says is person 1 (a tracker error an earlier run kept): it joins one identity, never both.
    rows = [("v1", "a", 0, 10, 0), ("v2", "b", 100, 110, 1), ("v3", "a", 200, 210, 1),
            ("v4", "b", 300, 310, 0), ("v5", "a", 400, 410, 1), ("v6", "b", 500, 510, 2), ("v7", "a", 600, 610, 0)]
    tracklets = _tracklets(rows, seed=4)
    prior = Prior().with_identities([["t0"], ["t1", "t2"]])
    linking = link_tracklets(tracklets, None, SETTINGS, prior, new=np.array([3, 4, 5, 6]))
    assert _together(linking, 0, 3) and _together(linking, 1, 4) and _together(linking, 0, 6)
    assert not _together(linking, 0, 1) and linking.identities == 3
    full = link_tracklets(tracklets, None, SETTINGS)
    assert np.array_equal(linking.identity, full.identity)
    # Only the new tracklets' neighbours are candidates: fewer pairs than a full run.
    assert linking.candidate_pairs < full.candidate_pairs
    wrong = Prior().with_identities([["t0"], ["t1", "t3"]])  # t3 (person 0) was put with person 1
    bridged = link_tracklets(tracklets, None, SETTINGS, wrong, new=np.array([6]))
    assert not _together(bridged, 0, 1)


def test_the_inverted_file_index_finds_nearly_every_exact_neighbour_pair_and_only_for_the_rows_asked():
    import torch

    rng = np.random.default_rng(0)
    person = rng.integers(300, size=4000)  # about 13 sightings of each of 300 people
    vectors = rng.standard_normal((300, DIM))[person] + 0.2 * rng.standard_normal((4000, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    exact = set(zip(*(pairs.tolist() for pairs in nearest_pairs(vectors, 10))))
    matrix = torch.from_numpy(vectors)
    found = approximate_neighbours(matrix, torch.arange(len(vectors)), 10)
    approximate = {tuple(pair) for pair in np.sort(found, axis=1).tolist()}
    same_person = {(a, b) for a, b in exact if person[a] == person[b]}
    assert len(approximate & same_person) >= 0.995 * len(same_person)
    assert len(approximate & exact) >= 0.95 * len(exact)
    asked = torch.tensor([5, 17, 3000])
    some = approximate_neighbours(matrix, asked, 10)
    assert set(some[:, 0].tolist()) == {5, 17, 3000} and np.array_equal(some, approximate_neighbours(matrix, asked, 10))


def test_the_global_baseline_links_by_the_global_vectors():
    tracklets = _tracklets([("v1", "a", 0, 10, 0), ("v2", "b", 100, 110, 0), ("v3", "a", 500, 510, 1)])
    linking = link_tracklets(tracklets, None, LinkSettings(0.2, 5, distance=GLOBAL_DISTANCE))
    assert _together(linking, 0, 1) and not _together(linking, 0, 2)


def test_paired_distance_is_the_diagonal_of_the_kpr_distance():
    first, second = _looks([0, 1, 2, 3], seed=1), _looks([1, 1, 0, 3], seed=2)
    second.visibility[0, :2] = 0.0
    assert np.allclose(paired_kpr_distance(first, second), np.diag(kpr_distance(first, second)), atol=1e-5)


def test_a_cameras_file_gives_transit_windows_and_refuses_an_impossible_one(tmp_path):
    path = tmp_path / "cameras.yaml"
    path.write_text("cameras:\n  a:\n    connects_to: {b: [30, 120]}\n  b:\n    connects_to: {c: 40}\n  c: {}\n")
    assert Topology.from_cameras(read_cameras(path)).windows == {("a", "b"): (30.0, 120.0), ("b", "c"): (20.0, 160.0)}
    path.write_text("cameras:\n  a:\n    connects_to: {b: [120, 30]}\n  b: {}\n")
    with pytest.raises(CamerasError, match=r"camera 'a': connects_to: impossible transit window to 'b': \[120, 30\]"):
        read_cameras(path)


def test_the_benchmark_scores_a_clustering_against_the_truth():
    from bench.link_identities import bcubed_f1, pairwise_scores

    truth = np.array([0, 0, 0, 1, 1, 2])
    assert pairwise_scores(truth, truth)["pairwise_f1"] == 1.0 and bcubed_f1(truth, truth) == 1.0
    alone = pairwise_scores(truth, np.arange(6))
    assert alone["pairwise_precision"] == 1.0 and alone["pairwise_recall"] == 0.0
    merged = pairwise_scores(truth, np.array([0, 0, 0, 0, 0, 2]))  # 4 true pairs of 10 linked
    assert merged["pairwise_precision"] == pytest.approx(0.4) and merged["pairwise_recall"] == 1.0
    # BCubed precision (3 x 3/5 + 2 x 2/5 + 1) / 6 = 0.6, recall 1
    assert bcubed_f1(truth, np.array([0, 0, 0, 0, 0, 2])) == pytest.approx(0.75)


def test_a_site_linked_batch_by_batch_finds_the_people_it_finds_all_at_once():
    from bench.link_identities import SiteConfig, build_site, link_in_batches, pairwise_scores

    site = build_site(SiteConfig(people=40, grid=(2, 2), span_s=600.0, video_s=120.0, visits=(2, 4),
                                 dwell_s=(5.0, 20.0), fastest_s=(20.0, 60.0), slowest_factor=3.0, frames=(3, 6),
                                 lookalike_groups=4, noise=1.0, parts=PARTS, dim=DIM, seed=2))
    settings = LinkSettings(0.75, 10)
    at_once = pairwise_scores(site.person, link_tracklets(site.tracklets, site.topology, settings).identity)
    in_batches = pairwise_scores(site.person, link_in_batches(site, settings, 5))
    assert at_once["pairwise_f1"] > 0.85 and in_batches["pairwise_f1"] >= at_once["pairwise_f1"] - 0.05
    assert in_batches["pairwise_precision"] >= at_once["pairwise_precision"] - 0.01


def test_the_benchmark_links_a_calibrated_stores_tracklets_and_scores_them_against_who_they_are(tmp_path, capsys):
    from bench.link_identities import main as bench, store_scores

    store = build_people_store(tmp_path / "db")  # person 0 in three tracklets on three cameras, then one per person
    with pytest.raises(SystemExit, match="not calibrated: run kpr calibrate"):
        store_scores(store, person_of, ["kpr_constraints"], 15)
    calibrate(store, person_of)
    result = store_scores(store, person_of, ["kpr_constraints", "global_only"], 15)["store"]
    assert result["people"] < result["tracklets"]
    assert result["methods"]["kpr_constraints"]["pairwise_f1"] == 1.0  # the store's people are far apart
    assert result["methods"]["kpr_constraints"]["identities"] == result["people"]
    assert bench(["--store", store.uri, "--out", "-"]) == 2  # no annotation sidecars beside its videos
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench.link_identities: error: no annotation sidecar beside")
