"""PersonSearch on a real LanceDB store built from controlled synthetic embeddings.

Six identities seen by three cameras, one tracklet of three detections per identity and camera.
Identity 5 shares only the feet with identity 0; identity 3 shows no legs or feet in camera 2;
identity 1 is barely visible in camera 2.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kpr_model.distance import ReIDEmbeddings
from storage import (
    NotFoundError,
    PersonSearch,
    RowsMovedError,
    SearchFilters,
    Store,
    StoreError,
    detection_row,
    detections_table,
    embeddings_of,
    group_hits,
)
from storage.search import SEARCH_ATTEMPTS
from support import unit_rows
from workers.crops import thumbnail_jpeg

K, D = 8, 16
FEET = [6, 7]
IDENTITIES, CAMERAS, PER_TRACK = 6, 3, 3
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
BOOTS_TWIN = 5
NO_LEGS = (3, 2)  # identity 3 in camera 2: legs and feet invisible
FAINT = (1, 2)  # identity 1 in camera 2: visibility 0.2 everywhere
MODEL_ID = "synthetic-model"
_THUMBNAILS = [thumbnail_jpeg(np.full((64, 32, 3), 40 * person, np.uint8)) for person in range(IDENTITIES)]


def identity_of(detection_id: str) -> int:
    """Identity encoded in a synthetic detection id "c{camera}-p{identity}-{n}"."""
    return int(detection_id.split("-")[1][1:])


def det_id(camera: int, person: int, n: int) -> str:
    return f"c{camera}-p{person}-{n}"


def track_id(camera: int, person: int) -> str:
    return f"video{camera}-t{person}"


def camera_name(camera: int) -> str:
    return f"cam{camera}"


def build_store(path: Path, dim: int = D, model_id: str = MODEL_ID) -> Store:
    """The synthetic store described in the module docstring (one video per camera, embedding size ``dim``)."""
    rng = np.random.default_rng(0)
    base = unit_rows(rng.standard_normal((IDENTITIES, K, dim)))
    base[BOOTS_TWIN, FEET] = base[0, FEET]
    store = Store.open(str(path))
    for camera in range(CAMERAS):
        rows, embeddings = [], []
        for person in range(IDENTITIES):
            for n in range(PER_TRACK):
                parts = unit_rows(base[person] + 0.08 * rng.standard_normal((K, dim)))
                visibility = rng.uniform(0.8, 1.0, K).astype(np.float32)
                if (person, camera) == NO_LEGS:
                    visibility[4:] = 0.0
                if (person, camera) == FAINT:
                    visibility[:] = 0.2
                embeddings.append(ReIDEmbeddings(unit_rows(parts.mean(axis=0))[None], parts[None], visibility[None]))
                rows.append(detection_row(det_id(camera, person, n), f"video{camera}", camera_name(camera),
                                          frame_index=10 * person + n, timestamp=T0 + 1000 * camera + 10 * person + n,
                                          bbox=[0, 0, 32, 64], model_id=model_id, track_id=track_id(camera, person),
                                          thumbnail=_THUMBNAILS[person]))
        video = {"video_id": f"video{camera}", "uri": f"/archive/cam{camera}.mp4", "camera_id": camera_name(camera),
                 "model_id": model_id}
        store.write_video(video, detections_table(rows, ReIDEmbeddings.concat(embeddings)))
    return store


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> PersonSearch:
    return PersonSearch(build_store(tmp_path_factory.mktemp("search") / "db"))


def _identities(hits) -> list[int]:
    return [identity_of(h.detection_id) for h in hits]


def test_by_detection_finds_the_same_person_in_other_cameras_first(search):
    hits = search.by_detection(det_id(0, 2, 0), k=8)
    assert _identities(hits)[:6] == [2] * 6
    assert all(h.camera_id != "cam0" for h in hits)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert hits[0].part_distances.shape == (K,) and np.all(hits[0].part_distances < 0.8)


def test_a_re_embedded_detection_searches_with_its_new_embedding_and_still_excludes_itself(search):
    stand_in = embeddings_of([search.store.get_detection(det_id(1, 3, 0))])
    hits = search.by_detection(det_id(0, 2, 0), k=8, query=stand_in, other_cameras_only=False)
    assert _identities(hits)[:5] == [3] * 5 and det_id(1, 3, 0) in {h.detection_id for h in hits}
    mine = search.by_detection(det_id(1, 3, 0), k=8, query=stand_in)
    assert det_id(1, 3, 0) not in {h.detection_id for h in mine} and "cam1" not in {h.camera_id for h in mine}


def test_feet_query_finds_the_person_who_shares_only_the_boots(search):
    whole = search.by_detection(det_id(0, 0, 0), k=12)
    assert _identities(whole)[:6] == [0] * 6 and whole[6].distance > 2 * whole[5].distance
    feet = search.by_detection(det_id(0, 0, 0), k=12, parts=FEET)
    assert sorted(_identities(feet)) == [0] * 6 + [BOOTS_TWIN] * 6
    assert BOOTS_TWIN in _identities(feet)[:3]
    twin = next(h for h in feet if identity_of(h.detection_id) == BOOTS_TWIN)
    assert twin.part_distances[FEET].max() < 0.8 and np.nanmin(twin.part_distances[:6]) > 1.0


def test_a_part_query_ranks_hits_without_that_part_last_and_refuses_bad_parts(search):
    legless = {det_id(2, 3, n) for n in range(PER_TRACK)}
    feet = search.by_detection(det_id(0, 3, 0), k=100, parts=FEET, other_cameras_only=False)
    assert len(feet) == CAMERAS * IDENTITIES * PER_TRACK - 1
    assert {h.detection_id for h in feet[-3:]} == legless
    assert np.isnan(feet[-1].part_distances[FEET]).all() and feet[-1].distance > feet[-4].distance
    with pytest.raises(StoreError, match=r"valid part indices are 0\.\.7"):
        search.by_detection(det_id(0, 0, 0), parts=[8])
    with pytest.raises(StoreError, match="does not show"):
        search.by_detection(det_id(2, 3, 0), parts=FEET)


def test_min_visibility_drops_hits_of_low_visibility(search):
    faint = {det_id(2, 1, n) for n in range(PER_TRACK)}
    everything = search.by_detection(det_id(0, 1, 0), k=6)
    assert faint <= {h.detection_id for h in everything}
    kept = search.by_detection(det_id(0, 1, 0), k=6, filters=SearchFilters(min_visibility=0.5))
    assert not faint & {h.detection_id for h in kept}
    assert all(h.mean_visibility() >= 0.5 for h in kept) and _identities(kept)[:3] == [1, 1, 1]
    legless = {det_id(2, 3, n) for n in range(PER_TRACK)}
    head = search.by_detection(det_id(0, 3, 0), k=6, parts=[0], filters=SearchFilters(min_visibility=0.7))
    assert legless <= {h.detection_id for h in head}
    feet = search.by_detection(det_id(0, 3, 0), k=6, parts=FEET, filters=SearchFilters(min_visibility=0.7))
    assert not legless & {h.detection_id for h in feet}


def test_camera_and_time_filters_hold(search):
    only = search.by_detection(det_id(0, 4, 0), k=10, filters=SearchFilters(cameras=["cam2"]))
    assert {h.camera_id for h in only} == {"cam2"} and _identities(only)[:3] == [4, 4, 4]
    window = SearchFilters(t_min=T0 + 1000, t_max=T0 + 1000 + 45)
    hits = search.by_detection(det_id(0, 4, 0), k=30, filters=window)
    assert hits and all(T0 + 1000 <= h.timestamp <= T0 + 1045 for h in hits)
    assert {identity_of(h.detection_id) for h in hits} == {0, 1, 2, 3, 4}
    with pytest.raises(StoreError, match="empty time window"):
        SearchFilters(t_min=T0 + 10, t_max=T0)
    with pytest.raises(StoreError, match="between 0 and 1"):
        SearchFilters(min_visibility=1.5)


def test_by_tracklet_excludes_its_own_detections_and_finds_the_person(search):
    own = {det_id(1, 4, n) for n in range(PER_TRACK)}
    hits = search.by_tracklet(track_id(1, 4), k=6, other_cameras_only=False)
    assert not own & {h.detection_id for h in hits}
    assert _identities(hits) == [4] * 6
    assert {h.camera_id for h in search.by_tracklet(track_id(1, 4), k=6)} == {"cam0", "cam2"}
    for unknown in ("nope", "nul\x00id"):
        with pytest.raises(NotFoundError, match="unknown tracklet id"):
            search.by_tracklet(unknown)
        with pytest.raises(NotFoundError, match="unknown detection id"):
            search.by_detection(unknown)


def test_rerank_keeps_a_clean_ranking(search):
    plain = search.by_detection(det_id(0, 2, 0), k=6)
    reranked = search.by_detection(det_id(0, 2, 0), k=6, rerank=True)
    assert {h.detection_id for h in reranked} == {h.detection_id for h in plain}
    assert _identities(reranked) == [2] * 6


def test_rerank_fixes_a_distractor_that_is_close_but_not_reciprocal(tmp_path):
    """A distractor nearer to the query than the true matches, but whose own neighbours are a
    dense crowd elsewhere, drops below the six true matches once k-reciprocal re-ranking runs."""
    rng = np.random.default_rng(1)
    angle, radius = rng.uniform(0, 2 * np.pi, 24), 0.3 * np.sqrt(rng.uniform(0, 1, 24))
    points = np.concatenate([
        [[0.0, 0.95]],  # the distractor
        np.array([1.0, 0.0]) + rng.uniform(-0.05, 0.05, (6, 2)),  # the true matches
        np.array([0.0, 1.55]) + np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1),
    ])
    vectors = np.zeros((len(points), D), np.float32)
    vectors[:, :2] = points
    gallery = ReIDEmbeddings(vectors, np.repeat(vectors[:, None], K, axis=1), np.ones((len(points), K), np.float32))
    names = ["distractor"] + [f"match{i}" for i in range(6)] + [f"crowd{i}" for i in range(24)]
    rows = [detection_row(name, "v", "cam", i, T0 + i, [0, 0, 1, 1], MODEL_ID) for i, name in enumerate(names)]
    store = Store.open(str(tmp_path / "db"))
    store.write_video({"video_id": "v", "uri": "v.mp4", "camera_id": "cam", "model_id": MODEL_ID, "start_time": T0,
                       "duration": 31.0}, detections_table(rows, gallery))
    query = ReIDEmbeddings(np.zeros((1, D), np.float32), np.zeros((1, K, D), np.float32), np.ones((1, K), np.float32))
    plain = PersonSearch(store).search(query, k=7)
    reranked = PersonSearch(store).search(query, k=7, rerank=True)
    assert plain[0].detection_id == "distractor"
    assert [h.detection_id[:5] for h in reranked[:6]] == ["match"] * 6
    assert reranked[6].detection_id == "distractor"


def test_group_hits_orders_cameras_and_tracklets_by_best_distance(search):
    hits = search.by_detection(det_id(0, 2, 0), k=12)
    groups = group_hits(hits)
    assert [g.best_distance for g in groups] == sorted(g.best_distance for g in groups)
    assert groups[0].camera_id == hits[0].camera_id
    assert groups[0].tracklets[0].track_id == hits[0].track_id == track_id(int(hits[0].camera_id[-1]), 2)
    for camera in groups:
        assert [t.best_distance for t in camera.tracklets] == sorted(t.best_distance for t in camera.tracklets)
        for track in camera.tracklets:
            assert {h.track_id for h in track.hits} == {track.track_id}
            assert track.best_distance == track.hits[0].distance
    assert sorted(h.detection_id for g in groups for t in g.tracklets for h in t.hits) == sorted(h.detection_id for h in hits)


def test_a_query_of_another_shape_is_refused(search):
    query = ReIDEmbeddings(np.ones((1, D), np.float32), np.ones((1, K + 1, D), np.float32), np.ones((1, K + 1), np.float32))
    with pytest.raises(StoreError, match="K=9"):
        search.search(query)


def test_global_only_ranks_a_kpr_store_by_the_cosine_of_the_global_vectors(search):
    hits = search.by_detection(det_id(0, 2, 0), k=12, global_only=True)
    query = embeddings_of([search.store.get_detection(det_id(0, 2, 0))])
    gallery = embeddings_of(search.store.detections_by_ids([h.detection_id for h in hits]))
    np.testing.assert_allclose([h.distance for h in hits], 1 - gallery.global_emb @ query.global_emb[0], atol=1e-5)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert hits[0].part_distances is None and hits[0].visibility.shape == (K,)
    with pytest.raises(StoreError, match="takes no body parts"):
        search.by_detection(det_id(0, 2, 0), global_only=True, parts=FEET)


def test_a_store_without_a_model_record_names_the_model_of_its_rows(search):
    assert search.store.model() == {"model_id": MODEL_ID, "kind": "kpr", "num_parts": K, "dim": D}
    assert not search.global_model


def _misleading_store(path: Path) -> tuple[Store, ReIDEmbeddings]:
    """A query, and a store where its KPR match has a far global vector behind 30 global look-alikes of other people."""
    rng = np.random.default_rng(2)
    query_parts = unit_rows(rng.standard_normal((K, D)))
    query_global = unit_rows(query_parts.mean(axis=0))
    look_alikes = unit_rows(query_global + 0.05 * rng.standard_normal((30, D)))
    global_emb = np.concatenate([unit_rows(-query_global)[None], look_alikes]).astype(np.float32)
    parts = np.concatenate([query_parts[None], unit_rows(rng.standard_normal((30, K, D)))]).astype(np.float32)
    gallery = ReIDEmbeddings(global_emb, parts, np.ones((31, K), np.float32))
    names = ["match"] + [f"other{i}" for i in range(30)]
    rows = [detection_row(name, "v", "cam", i, T0 + i, [0, 0, 1, 1], MODEL_ID) for i, name in enumerate(names)]
    store = Store.open(str(path))
    store.write_video({"video_id": "v", "uri": "v.mp4", "camera_id": "cam", "model_id": MODEL_ID, "start_time": T0,
                       "duration": 31.0}, detections_table(rows, gallery))
    return store, ReIDEmbeddings(query_global[None], query_parts[None], np.ones((1, K), np.float32))


def test_a_filter_scanned_exactly_re_ranks_its_larger_pool_and_no_search_exceeds_the_cap(tmp_path):
    store, query = _misleading_store(tmp_path / "db")
    one_camera = SearchFilters(cameras=["cam"])

    def best(search: PersonSearch, filters: SearchFilters) -> str:
        return search.search(query, k=1, filters=filters, candidates=5)[0].detection_id

    assert best(PersonSearch(store, filtered_candidates=40), one_camera) == "match"
    assert best(PersonSearch(store, filtered_candidates=40), SearchFilters()) != "match"  # 5 candidates only
    assert best(PersonSearch(store, filtered_candidates=5), one_camera) != "match"
    assert best(PersonSearch(store, filtered_candidates=40, max_candidates=10), one_camera) != "match"
    assert best(PersonSearch(store, filtered_candidates=5, filtered_share=1.0), one_camera) == "match"  # all 31 kept
    assert best(PersonSearch(store, filtered_candidates=5, filtered_share=0.9), one_camera) != "match"  # 28
    assert best(PersonSearch(store, filtered_candidates=5, filtered_share=1.0, max_candidates=10), one_camera) != "match"
    assert PersonSearch(store).search(query, k=1, candidates=100)[0].detection_id == "match"
    assert PersonSearch(store, max_candidates=10).search(query, k=1, candidates=100)[0].detection_id != "match"


def test_row_ids_that_maintenance_renumbered_read_nothing_rather_than_other_rows(tmp_path):
    store = build_store(tmp_path / "db")  # one commit per camera, so maintenance merges three fragments
    query = embeddings_of([store.get_detection(det_id(2, 4, 0))])
    found = store.nearest(query.global_emb[0], None, 12, ["frame_index"])
    assert store.detections_at(found, ["detection_id"])["detection_id"][0].as_py() == det_id(2, 4, 0)
    store.maintain(cleanup_older_than=None)
    with pytest.raises(RowsMovedError, match="12 of 12 detections were deleted or moved by maintenance"):
        store.detections_at(found, ["detection_id", "frame_index"])


@pytest.mark.parametrize("filters", [SearchFilters(), SearchFilters(cameras=[camera_name(1), camera_name(2)])],
                         ids=["approximate", "scanned"])
def test_a_search_that_maintenance_overtakes_runs_again_and_returns_the_same_hits(tmp_path, filters):
    store = build_store(tmp_path / "db")
    query = embeddings_of([store.get_detection(det_id(0, 4, 0))])
    expected = PersonSearch(store).search(query, k=8, filters=filters)
    read, maintained = store.detections_at, []

    def maintain_then_read(found, columns):
        if not maintained:  # between finding the rows and reading them
            maintained.append(store.maintain(cleanup_older_than=None))
        return read(found, columns)

    store.detections_at = maintain_then_read
    hits = PersonSearch(store).search(query, k=8, filters=filters)
    assert maintained and [h.detection_id for h in hits] == [h.detection_id for h in expected]
    assert [h.distance for h in hits] == pytest.approx([h.distance for h in expected])


def test_rows_whose_ids_name_other_detections_by_the_time_they_are_read_are_never_shown_as_hits(tmp_path):
    store = build_store(tmp_path / "db")
    query = embeddings_of([store.get_detection(det_id(0, 4, 0))])
    expected = [h.detection_id for h in PersonSearch(store).search(query, k=5)]
    read, swaps = store.detections_at, [1]

    def other_rows(found, columns):  # a table dropped and written again gives the same row ids to other rows
        rows = read(found, columns)
        return rows.take(list(reversed(range(rows.num_rows)))) if "thumbnail" in columns and swaps and swaps.pop() else rows

    store.detections_at = other_rows
    assert [h.detection_id for h in PersonSearch(store).search(query, k=5)] == expected
    swaps[:] = [1] * SEARCH_ATTEMPTS
    with pytest.raises(RowsMovedError, match="replaced while they were being searched"):
        PersonSearch(store).search(query, k=5)


def test_an_exclusion_that_keeps_most_rows_still_never_returns_what_it_excludes(tmp_path):
    store, query = _misleading_store(tmp_path / "db")  # excluding 2 of 31 rows: filtered after the vector search
    excluded = ["other0", "other1"]
    hits = PersonSearch(store).search(query, k=20, filters=SearchFilters(exclude_detection_ids=excluded), candidates=20)
    assert len(hits) == 20 and not {h.detection_id for h in hits} & set(excluded)
