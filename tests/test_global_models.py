"""Global person-ReID ONNX models in the product: encoding, ingestion into a store of their own, search, and
one model per store (a different model is refused before any work, or replaces the store's with --replace-model)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from kpr_model.global_onnx import INPUT_METADATA_KEY, GlobalOnnxEncoder
from kpr_model.model_facts import model_facts
from kpr_model.model_files import open_encoder
from kpr_model.onnx_session import OnnxModelError
from pipelines.cli import main
from storage import PersonSearch, Store, embeddings_of

OMZ_0248 = "person-reidentification-retail-0248.onnx"
OMZ_0287 = "person-reidentification-retail-0287.onnx"
# Two "cameras" cut from the Intel video: each holds person 0 (its first 3 s) then person 1 (its last 3 s),
# at different moments of their walk, so a match across the cameras is a re-identification, not the same frame.
CLIPS = {"cam_a": ((95, 125), (280, 310)), "cam_b": ((135, 165), (350, 380))}
FRAMES_PER_PERSON = 30


def _model(shared_data: Path, name: str) -> Path:
    return shared_data / "models" / name


class _ChannelMeans(torch.nn.Module):
    """A stand-in global model: NCHW image -> its 3 channel means (an embedding anyone can recompute)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def channel_means_onnx(tmp_path_factory) -> Path:
    """An NCHW ONNX model with a free batch axis and ImageNet coding recorded in its metadata."""
    path = tmp_path_factory.mktemp("global") / "means.onnx"
    torch.onnx.export(_ChannelMeans(), torch.zeros(2, 3, 32, 16), str(path), input_names=["images"],
                      output_names=["embedding"], dynamic_axes={"images": {0: "n"}, "embedding": {0: "n"}},
                      dynamo=False)
    model = onnx.load(str(path))
    model.metadata_props.add(key=INPUT_METADATA_KEY, value="imagenet")
    onnx.save(model, str(path))
    return path


def test_the_omz_files_are_read_from_their_graph_and_named_per_file_and_coding(shared_data):
    first, second = (GlobalOnnxEncoder(_model(shared_data, name)) for name in (OMZ_0248, OMZ_0287))
    assert (first.kind, first.num_parts, first.dim, first.graph.size, first.graph.batch) == ("global", 1, 256, (256, 128), 1)
    assert first.graph.channels_last and first.input_coding == "bgr255"
    crops = [np.random.default_rng(i).integers(0, 255, (90 + 10 * i, 40, 3), np.uint8) for i in range(3)]
    embedded = first.embed(crops)
    assert embedded.global_emb.shape == (3, 256) and np.allclose(np.linalg.norm(embedded.global_emb, axis=1), 1)
    assert np.array_equal(embedded.parts[:, 0], embedded.global_emb) and np.all(embedded.visibility == 1)
    ids = {first.model_id, second.model_id, model_facts(_model(shared_data, OMZ_0248), "rgb255").model_id}
    assert len(ids) == 3 and model_facts(_model(shared_data, OMZ_0248)).model_id == first.model_id


def test_a_batched_nchw_model_gets_the_coding_its_metadata_names(channel_means_onnx):
    encoder = open_encoder(channel_means_onnx)
    assert isinstance(encoder, GlobalOnnxEncoder) and encoder.input_coding == "imagenet"
    assert not encoder.graph.channels_last and encoder.graph.batch is None and encoder.dim == 3
    crops = [np.full((64, 32, 3), (200, 100, 50), np.uint8), np.full((40, 20, 3), (10, 20, 30), np.uint8)]
    coded = (np.array([[200, 100, 50], [10, 20, 30]]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    expected = coded / np.linalg.norm(coded, axis=1, keepdims=True)
    np.testing.assert_allclose(encoder.embed(crops, batch_size=2).global_emb, expected, atol=1e-5)
    assert open_encoder(channel_means_onnx, input_coding="rgb255").model_id != encoder.model_id
    with pytest.raises(OnnxModelError, match="unknown input coding 'bgr'"):
        open_encoder(channel_means_onnx, input_coding="bgr")


def test_a_detector_or_a_coding_for_a_kpr_model_is_one_line(shared_data, tiny_checkpoint, tmp_path, capsys):
    db = tmp_path / "db"
    yolox = _model(shared_data, "yolox_nano_416x416.onnx")
    for model, extra, expected in ((yolox, [], "neither a KPR export nor a global person-ReID model"),
                                   (tiny_checkpoint, ["--model-input", "rgb01"], "applies to global ReID ONNX models")):
        code = main(["ingest", str(shared_data / "video"), "--db", str(db), "--model", str(model), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (db / "detections.lance").exists()


def _cut(video: Path, spans: tuple[tuple[int, int], ...], out: Path) -> None:
    """Frames ``spans`` (start, end) of ``video`` written one after another as an mp4 at the source's rate."""
    source = cv2.VideoCapture(str(video))
    fps = source.get(cv2.CAP_PROP_FPS)
    size = (int(source.get(cv2.CAP_PROP_FRAME_WIDTH)), int(source.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for start, end in spans:
        source.set(cv2.CAP_PROP_POS_FRAMES, start)
        for _ in range(end - start):
            ok, frame = source.read()
            assert ok
            writer.write(frame)
    writer.release()
    source.release()


def _ingest(archive: Path, db: Path, model: Path, shared_data: Path, *extra: str) -> int:
    return main(["ingest", str(archive), "--db", str(db), "--model", str(model), "--backend", "yolox",
                 "--detector-model", str(_model(shared_data, "yolox_nano_416x416.onnx")),
                 "--pose-model", str(_model(shared_data, "movenet_singlepose_lightning_int8.tflite")),
                 "--fps", "2", "--no-progress", *extra])


@pytest.fixture(scope="module")
def real_store(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """The two real clips ingested with OMZ 0248; returns (archive, db)."""
    archive = tmp_path_factory.mktemp("real_clips")
    for camera, spans in CLIPS.items():
        (archive / camera).mkdir()
        _cut(shared_data / "video" / "one-by-one-person-detection.mp4", spans, archive / camera / "clip.mp4")
    db = tmp_path_factory.mktemp("global_store") / "db"
    assert _ingest(archive, db, _model(shared_data, OMZ_0248), shared_data) == 0
    return archive, db


def _person(row: dict) -> int:
    return int(row["frame_index"] >= FRAMES_PER_PERSON)


@pytest.mark.integration
def test_a_store_of_omz_0248_finds_the_same_real_person_in_the_other_camera(real_store, shared_data):
    _, db = real_store
    store = Store.open(str(db), create=False)
    facts = model_facts(_model(shared_data, OMZ_0248))
    assert store.model() == {"model_id": facts.model_id, "kind": "global", "num_parts": 1, "dim": 256, "holistic_weight": 1.0}
    search = PersonSearch(store)
    queries = store.query_detections("camera_id = 'cam_a'", ["detection_id", "frame_index"]).to_pylist()
    assert len({_person(q) for q in queries}) == 2
    for query in queries:
        hits = search.by_detection(query["detection_id"], k=3)
        assert hits and hits[0].camera_id == "cam_b" and _person(store.get_detection(hits[0].detection_id)) == _person(query)
        assert hits[0].visibility is None and hits[0].part_distances is None


@pytest.mark.integration
def test_global_search_ranks_by_cosine_and_has_no_parts(real_store, capsys):
    _, db = real_store
    store = Store.open(str(db), create=False)
    query = store.query_detections("camera_id = 'cam_a'", None, limit=1)
    hits = PersonSearch(store).by_detection(query["detection_id"][0].as_py(), k=50)
    gallery = store.detections_by_ids([h.detection_id for h in hits])
    cosine = embeddings_of(gallery).global_emb @ embeddings_of(query).global_emb[0]
    np.testing.assert_allclose([h.distance for h in hits], 1 - cosine, atol=1e-5)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert main(["search", "--db", str(db), "--detection", query["detection_id"][0].as_py(), "--part", "head"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "global ReID model" in err[0]


@pytest.mark.integration
def test_another_model_is_refused_at_once_and_replace_model_re_embeds_the_whole_store(real_store, shared_data,
                                                                                      tiny_checkpoint, capsys):
    archive, db = real_store
    held = Store.open(str(db), create=False).model()["model_id"]
    for model in (tiny_checkpoint, _model(shared_data, OMZ_0287)):  # another shape, then the same shape
        assert _ingest(archive, db, model, shared_data) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and held in err[0] and model_facts(model).model_id in err[0] and "--replace-model" in err[0]
    image = shared_data / "reid" / "one_by_one_crops" / "p00_f00100.jpg"
    assert main(["search", "--db", str(db), "--image", str(image), "--model", str(_model(shared_data, OMZ_0287))]) == 2
    assert "query with the model the store was built with" in capsys.readouterr().err
    # Only cam_a stays in the archive: cam_b is re-embedded from the location the store recorded.
    only_a = archive.parent / "only_a"
    (only_a / "cam_a").mkdir(parents=True)
    (only_a / "cam_a" / "clip.mp4").symlink_to(archive / "cam_a" / "clip.mp4")
    new = model_facts(_model(shared_data, OMZ_0287)).model_id
    assert _ingest(only_a, db, _model(shared_data, OMZ_0287), shared_data, "--replace-model") == 0
    store = Store.open(str(db), create=False)
    assert store.model()["model_id"] == new
    assert {v["model_id"] for v in store.video_rows()} == {new} and store.count_videos("done") == 2
    models = set(store.query_detections(None, ["model_id"])["model_id"].to_pylist())
    tracklet_models = set(store.list_tracklets(columns=["model_id"])["model_id"].to_pylist())
    assert models == tracklet_models == {new} and store.cameras() == ["cam_a", "cam_b"]
    assert main(["search", "--db", str(db), "--image", str(image), "--model", str(_model(shared_data, OMZ_0287)),
                 "-k", "3"]) == 0
    assert json.dumps(store.model())  # the record stays plain JSON
