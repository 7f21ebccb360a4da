"""kpr adapt: an ingested archive's tracklets as pseudo-identities, keypoint part pseudo-masks, the adapt-model flow."""
from __future__ import annotations

import numpy as np
import pytest

from kpr_model.checkpoint_files import read_checkpoint_info
from kpr_model.distance import kpr_distance
from kpr_model.export import export_checkpoint_onnx
from kpr_model.hybrid_files import DEFAULT_HOLISTIC_WEIGHT
from kpr_model.keypoints import KEYPOINT_INDEX, group_names
from kpr_model.losses import part_labels_at
from kpr_model.model_facts import model_facts
from pipelines.cli import main
from storage import PersonSearch, Store, embeddings_of
from training.keypoint_masks import keypoint_part_confidences
from training.pseudo_labels import TrackletSpan, pseudo_identities
from training.samples import PART_THRESHOLD, part_probabilities


@pytest.fixture(scope="module")
def ingested_store(small_archive, tiny_checkpoint, tmp_path_factory):
    """The small synthetic archive ingested with the tiny checkpoint (annotations backend)."""
    db = tmp_path_factory.mktemp("adapt") / "db"
    assert main(["ingest", str(small_archive), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress"]) == 0
    return db


def test_adapted_checkpoint_is_new_and_ingest_and_search_take_it(ingested_store, small_archive, tiny_checkpoint,
                                                                  tmp_path, capsys):
    out = tmp_path / "adapted"
    assert main(["adapt", "--db", str(ingested_store), "--model", str(tiny_checkpoint), "--out", str(out),
                 "--epochs", "2", "--threads", "1"]) == 0
    config, model_id, metadata = read_checkpoint_info(out)
    assert model_id != read_checkpoint_info(tiny_checkpoint)[1]
    source = metadata["adaptation"]["source"]
    assert config.num_classes == source["pseudo_identities"] >= 2 and source["cameras"] >= 2
    assert f"checkpoint {out} (model_id {model_id})" in capsys.readouterr().out

    db = tmp_path / "db"
    assert main(["ingest", str(small_archive), "--db", str(db), "--model", str(out), "--no-progress"]) == 0
    row = Store.open(str(db), create=False).query_detections(None, columns=["detection_id"], limit=1).to_pylist()[0]
    capsys.readouterr()
    assert main(["search", "--db", str(db), "--detection", row["detection_id"], "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


def test_pseudo_labels_never_join_tracklets_that_overlap_in_one_camera():
    rng = np.random.default_rng(0)
    for _ in range(50):
        spans = [TrackletSpan(f"t{i}", f"cam{rng.integers(3)}", start, start + rng.uniform(1, 20))
                 for i, start in enumerate(rng.uniform(0, 60, 12))]
        # Near-identical embeddings: every mutual nearest pair is similar enough, so only the time rule says no.
        embeddings = 1 + 0.01 * rng.standard_normal((len(spans), 8))
        labels = pseudo_identities(spans, embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), 0.5)
        assert sorted(set(labels)) == list(range(max(labels) + 1))
        for i, a in enumerate(spans):
            for j, b in enumerate(spans[:i]):
                assert not (labels[i] == labels[j] and a.overlaps(b)), (a, b)


def test_pseudo_labels_merge_the_same_person_across_cameras_only():
    spans = [TrackletSpan("a1", "a", 0, 5), TrackletSpan("a2", "a", 6, 9), TrackletSpan("b1", "b", 0, 4),
             TrackletSpan("b2", "b", 5, 8)]
    embeddings = np.array([[1, 0], [0, 1], [0.99, 0.14], [0.14, 0.99]], np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert pseudo_identities(spans, embeddings, 0.9) == [0, 1, 0, 1]
    assert pseudo_identities(spans, embeddings, 0.999) == [0, 1, 2, 3]
    assert pseudo_identities(spans) == [0, 1, 2, 3]


def test_keypoint_part_masks_put_the_head_on_the_head_keypoints():
    keypoints = np.zeros((17, 3), np.float32)
    skeleton = {"nose": (16, 8), "left_eye": (17, 7), "right_eye": (15, 7), "left_ear": (18, 8), "right_ear": (14, 8),
                "left_shoulder": (21, 16), "right_shoulder": (11, 16), "left_elbow": (23, 26), "right_elbow": (9, 26),
                "left_wrist": (23, 34), "right_wrist": (9, 34), "left_hip": (19, 36), "right_hip": (13, 36),
                "left_knee": (19, 48), "right_knee": (13, 48)}
    for name, (x, y) in skeleton.items():
        keypoints[KEYPOINT_INDEX[name]] = (x, y, 0.9)
    parts = keypoint_part_confidences(keypoints, 64, 32, "eight")
    names = group_names("eight")
    assert parts.shape == (8, 64, 32)
    assert parts[names.index("head"), 8, 16] == 1 and parts[:, 8, 16].argmax() == names.index("head")
    assert parts[names.index("torso"), 26, 16] > PART_THRESHOLD  # inside the torso, between its keypoints
    assert parts[names.index("left_foot")].max() == 0 and parts[names.index("right_foot")].max() == 0  # no ankles
    assert parts[names.index("head"), 60, :].max() == 0


def test_every_part_of_a_standing_person_is_taught_at_the_part_classifiers_resolution():
    # a 256 x 128 crop of a person seen whole (masks at 1/4, the classifier at 1/16): no part, the feet included,
    # may lose all its pixels to a part drawn over it, or the model learns that part is never visible
    standing = {"nose": (64, 20), "left_eye": (60, 16), "right_eye": (68, 16), "left_ear": (56, 20),
                "right_ear": (72, 20), "left_shoulder": (44, 55), "right_shoulder": (84, 55), "left_elbow": (38, 95),
                "right_elbow": (90, 95), "left_wrist": (36, 130), "right_wrist": (92, 130), "left_hip": (52, 130),
                "right_hip": (76, 130), "left_knee": (52, 185), "right_knee": (76, 185), "left_ankle": (52, 238),
                "right_ankle": (76, 238)}
    keypoints = np.zeros((17, 3), np.float32)
    for name, (x, y) in standing.items():
        keypoints[KEYPOINT_INDEX[name]] = (x / 4, y / 4, 0.9)
    targets = part_probabilities(keypoint_part_confidences(keypoints, 64, 32, "eight"), (256, 128))
    labels = part_labels_at(targets[None], (16, 8))[0].numpy()
    cells = np.bincount(labels.ravel(), minlength=9)[1:]
    assert (cells > 0).all(), dict(zip(group_names("eight"), cells.tolist()))
    assert set(labels[-1][labels[-1] > 0]) == {group_names("eight").index(f) + 1 for f in ("left_foot", "right_foot")}


def test_a_global_onnx_model_adapts_into_kpr_on_its_trunk_and_teaches_it(ingested_store, small_archive,
                                                                          tiny_global_onnx, tmp_path, capsys):
    out = tmp_path / "on_trunk"
    assert main(["adapt", "--db", str(ingested_store), "--model", str(tiny_global_onnx), "--out", str(out),
                 "--epochs", "3", "--threads", "1"]) == 0
    config, model_id, metadata = read_checkpoint_info(out)
    adaptation = metadata["adaptation"]
    assert config.backbone == "onnx_trunk" and config.image_size == (64, 32) and config.num_parts == 8
    assert adaptation["adapted_from"] == model_facts(tiny_global_onnx).model_id
    assert adaptation["source"]["teacher"] == str(tiny_global_onnx)  # the model itself teaches by default
    assert adaptation["adapt_config"]["part_warmup_epochs"] == 1

    # the adapted KPR has the global model's size, so the two make a hybrid; ingested and searched as any model
    hybrid, db = tmp_path / "hybrid", tmp_path / "db"
    assert main(["hybrid", "--kpr", str(out), "--global", str(tiny_global_onnx), "--out", str(hybrid)]) == 0
    assert main(["ingest", str(small_archive), "--db", str(db), "--model", str(hybrid), "--no-progress"]) == 0
    store = Store.open(str(db), create=False)
    assert store.model()["holistic_weight"] == DEFAULT_HOLISTIC_WEIGHT
    assert store.model()["model_id"] == model_facts(hybrid).model_id
    visibility = np.stack(store.query_detections(None, columns=["visibility"]).column("visibility").to_numpy(
        zero_copy_only=False))
    assert visibility.shape[1] == 8 and len(visibility) > 100
    row = store.query_detections(None, columns=["detection_id"], limit=1).to_pylist()[0]
    capsys.readouterr()
    assert main(["search", "--db", str(db), "--detection", row["detection_id"], "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    # search ranks by the hybrid's distance: the whole body counted DEFAULT_HOLISTIC_WEIGHT times among the parts
    search = PersonSearch(store)
    query, filters = search.detection_query(row["detection_id"])
    hits = search.search(query, k=5, filters=filters)
    gallery = embeddings_of([store.get_detection(hit.detection_id) for hit in hits])
    weighted = kpr_distance(query, gallery, holistic_weight=DEFAULT_HOLISTIC_WEIGHT)[0]
    np.testing.assert_allclose([hit.distance for hit in hits], weighted, atol=1e-5)
    assert not np.allclose([hit.distance for hit in hits], kpr_distance(query, gallery)[0], atol=1e-3)


def test_bad_input_is_one_line_exit_2_and_nothing_written(ingested_store, tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty_store"
    Store.open(str(empty), create=True)
    out = tmp_path / "out"
    export = tmp_path / "tiny.onnx"
    export_checkpoint_onnx(tiny_checkpoint, export)
    cases = [
        (["--db", str(empty), "--model", str(tiny_checkpoint), "--out", str(out)], "no tracklets"),
        (["--db", str(ingested_store), "--model", str(tmp_path / "nomodel"), "--out", str(out)], "nomodel"),
        (["--db", str(tmp_path / "nostore"), "--model", str(tiny_checkpoint), "--out", str(out)], "no store"),
        (["--db", str(ingested_store), "--model", str(tiny_checkpoint), "--out", str(tiny_checkpoint)],
         "already exists"),
        (["--db", str(ingested_store), "--model", str(export), "--out", str(out)],
         "is a KPR export, which cannot be trained"),
    ]
    for arguments, message in cases:
        capsys.readouterr()
        assert main(["adapt", *arguments]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kpr adapt: error:") and message in err[0], err
        assert not out.exists()
    assert read_checkpoint_info(tiny_checkpoint)[1]  # the existing folder was left as it was
