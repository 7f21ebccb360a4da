"""Detection + pose backends: annotation formats, YOLOX and MoveNet on real data, OpenPifPaf, backend choice."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.annotations import AnnotationsBackend, find_sidecar, load_sidecar
from workers.backends import BackendConfig, make_backend, video_camera_and_start
from workers.errors import AnnotationError, WorkerError
from workers.movenet import MoveNet
from workers.openpifpaf_backend import INSTALL_HINT
from workers.records import DecodedFrame

POSETRACK_KEYPOINTS = ["nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                       "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                       "left_knee", "right_knee", "left_ankle", "right_ankle"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _frames(indices, image: np.ndarray | None = None) -> list[DecodedFrame]:
    return [DecodedFrame(i, i / 10, np.zeros((8, 8, 3), np.uint8) if image is None else image) for i in indices]


def _flat_keypoints(x: float, y: float, visibility: int) -> list[float]:
    return [v for j in range(17) for v in (x + j, y + 2 * j, visibility)]


@pytest.fixture(scope="module")
def coco_person(shared_data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The real COCO image (RGB), its person's box and keypoints, read through the COCO parser."""
    sidecar = load_sidecar(shared_data / "pose" / "coco_000000000785_keypoints.json")
    assert sidecar.format == "coco" and list(sidecar.frames) == [785]
    person = sidecar.frames[785][0]
    image = cv2.cvtColor(cv2.imread(str(shared_data / "pose" / "coco_000000000785.jpg")), cv2.COLOR_BGR2RGB)
    return image, person.bbox, person.keypoints


def _median_error(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.median(np.linalg.norm(found[:, :2] - truth[:, :2], axis=1)))


def test_yolox_with_movenet_finds_the_people_of_the_real_video(shared_data):
    import decord

    models = shared_data / "models"
    rows = list(csv.DictReader((shared_data / "reid" / "one_by_one_crops" / "crops.csv").open()))
    video = shared_data / "video" / "one-by-one-person-detection.mp4"
    reader = decord.VideoReader(str(video), num_threads=1)
    indices = [int(r["frame_index"]) for r in rows]
    frames = [DecodedFrame(i, 0.0, image) for i, image in zip(indices, reader.get_batch(indices).asnumpy())]
    backend = make_backend(BackendConfig("yolox", detector_model=str(models / "yolox_nano_416x416.onnx"),
                                         pose_model=str(models / "movenet_singlepose_lightning_int8.tflite")))
    found = backend.detect(str(video), frames)
    truth = [np.array([float(r[k]) for k in "xywh"]) for r in rows]
    best = [max((_iou(d.bbox, box) for d in people), default=0.0) for people, box in zip(found, truth)]
    assert sum(iou >= 0.5 for iou in best) >= 17, best  # measured: 18 of 18, IoU 0.96-0.99
    assert sum(len(people) for people in found) <= 20
    for people, box in zip(found, truth):
        for person in people:
            confident = person.keypoints[person.keypoints[:, 2] > 0.3, :2]
            assert len(confident) >= 5
            x, y, w, h = person.bbox
            inside = (confident[:, 0] >= x - 0.1 * w) & (confident[:, 0] <= x + 1.1 * w) & (confident[:, 1] <= y + 1.1 * h)
            assert inside.mean() >= 0.8


def test_movenet_finds_the_real_coco_keypoints(shared_data, coco_person):
    image, box, truth = coco_person
    pose = MoveNet(shared_data / "models" / "movenet_singlepose_lightning_int8.tflite")
    keypoints = pose.estimate(image, box)
    assert _median_error(keypoints, truth) < 20  # measured 5.0 px for this 347 px tall person
    assert keypoints[:, 2].min() >= 0 and keypoints[:, 2].max() <= 1


def test_mot_boxes_get_movenet_keypoints_and_keep_their_tracks(shared_data, coco_person, tmp_path):
    image, box, truth = coco_person
    (tmp_path / "seq" / "gt").mkdir(parents=True)
    x, y, w, h = box.tolist()
    (tmp_path / "seq" / "gt" / "gt.txt").write_text(f"786,4,{x},{y},{w},{h},1,1,1.0\n")
    config = BackendConfig("annotations", pose_model=str(shared_data / "models" / "movenet_singlepose_lightning_int8.tflite"))
    [[person]] = make_backend(config).detect(str(tmp_path / "seq" / "seq.mp4"), _frames([785], image))
    assert person.track_id == "4" and np.allclose(person.bbox, box)
    assert _median_error(person.keypoints, truth) < 20


def test_posetrack21_json(tmp_path):
    images = [{"is_labeled": True, "nframes": 2, "frame_id": 10003420000 + n, "vid_id": "000342",
               "file_name": f"images/val/000342_mpii_test/{n:06d}.jpg", "id": 10003420000 + n,
               "has_labeled_person": True, "ignore_regions_x": [], "ignore_regions_y": []} for n in (0, 1)]
    annotations = [{"bbox": [10, 20, 40, 90], "bbox_head": [20, 20, 10, 12], "category_id": 1, "id": 1000342000100,
                    "image_id": 10003420001, "keypoints": _flat_keypoints(15, 25, 1), "person_id": 7, "track_id": 3},
                   {"bbox": [60, 20, 40, 90], "category_id": 1, "id": 1000342000101, "image_id": 10003420001,
                    "keypoints": _flat_keypoints(65, 25, 0), "person_id": 8, "track_id": 4}]
    document = {"images": images, "annotations": annotations,
                "categories": [{"supercategory": "person", "id": 1, "name": "person",
                                "keypoints": POSETRACK_KEYPOINTS, "skeleton": [[16, 14]]}]}
    (tmp_path / "clip.json").write_text(json.dumps(document))
    found = AnnotationsBackend().detect(str(tmp_path / "clip.mp4"), _frames([0, 1]))
    assert [len(f) for f in found] == [0, 2]
    first, second = found[1]
    assert (first.track_id, second.track_id) == ("3", "4")
    assert first.bbox.tolist() == [10, 20, 40, 90]
    # head_bottom / head_top are not COCO eyes: dropped; every other joint visible at its place
    assert first.keypoints[:, 2].tolist() == [1, 0, 0] + [1] * 14
    assert first.keypoints[15, :2].tolist() == [15 + 15, 25 + 30]
    assert second.keypoints[:, 2].max() == 0
    assert video_camera_and_start(BackendConfig(), str(tmp_path / "clip.mp4")) == (None, None)


def test_coco_json_frame_rule_visibility_and_skipped_annotations(tmp_path):
    document = {"images": [{"id": 1, "file_name": "frames/frame_000012.jpg"}, {"id": 2, "file_name": "x.jpg", "frame_index": 20}],
                "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
                "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 30, 60], "iscrowd": 0,
                                 "keypoints": [v for j in range(17) for v in (j, j, 2 if j < 5 else 1)]},
                                {"image_id": 1, "category_id": 3, "bbox": [1, 2, 30, 60]},
                                {"image_id": 2, "category_id": 1, "bbox": [0, 0, 90, 90], "iscrowd": 1},
                                {"image_id": 2, "category_id": 1, "bbox": [5, 5, 20, 40], "score": 0.7}]}
    (tmp_path / "v.json").write_text(json.dumps(document))
    sidecar = load_sidecar(find_sidecar(tmp_path / "v.mp4"))
    assert sidecar.format == "coco" and sorted(sidecar.frames) == [12, 20]
    [person] = sidecar.frames[12]
    assert person.track_id is None and person.keypoints[:, 2].tolist() == [1] * 5 + [0] * 12
    [boxed] = sidecar.frames[20]
    assert boxed.score == pytest.approx(0.7) and boxed.keypoints[:, 2].max() == 0


@pytest.mark.parametrize("name", ["clip.gt.txt", "clip.txt", "gt/gt.txt"])
def test_mot_gt_rows_and_file_places(tmp_path, name):
    rows = ["1,1,10,20,30,60,1,1,1.0", "1,2,50,20,30,60,0,1,1.0",  # conf 0: MOT17 "ignore"
            "2,1,12,20,30,60,1,7,0.5",  # class 7: static person, not a pedestrian
            "", "3,1,14.5,20,30,60,1,1,0.9", "3,-1,80,20,30,60"]
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text("\n".join(rows))
    assert find_sidecar(tmp_path / "clip.mp4") == tmp_path / name
    found = AnnotationsBackend().detect(str(tmp_path / "clip.mp4"), _frames([0, 1, 2]))
    assert [[(d.track_id, d.bbox.tolist()) for d in f] for f in found] == [
        [("1", [10, 20, 30, 60])], [], [("1", [14.5, 20, 30, 60]), (None, [80, 20, 30, 60])]]
    assert all(d.keypoints[:, 2].max() == 0 for f in found for d in f)


def test_annotation_file_search_order_and_kpr_facts(tmp_path):
    kpr = {"format": "kpr-sidecar-v1", "camera_id": "north", "start_time": 1.7e9, "frames": []}
    (tmp_path / "a.json").write_text(json.dumps(kpr))
    (tmp_path / "a.txt").write_text("1,1,10,20,30,60\n")
    assert find_sidecar(tmp_path / "a.mp4").name == "a.json"
    assert video_camera_and_start(BackendConfig(), str(tmp_path / "a.mp4")) == ("north", 1.7e9)
    (tmp_path / "x.onnx").write_bytes(b"")
    yolox = BackendConfig("yolox", detector_model=str(tmp_path / "x.onnx"))
    assert video_camera_and_start(yolox, str(tmp_path / "a.mp4")) == (None, None)
    with pytest.raises(AnnotationError, match=r"b.mp4: no sidecar annotation file.*b.json, b.gt.txt, b.txt, gt/gt.txt"):
        AnnotationsBackend().detect(str(tmp_path / "b.mp4"), _frames([0]))


BAD_FILES = [
    ("v.json", {"images": [{"id": 1, "file_name": "still.jpg"}], "annotations": []}, "has no frame index"),
    ("v.json", {"images": [{"id": 1, "frame_index": 3}, {"id": 2, "frame_index": 3}], "annotations": []},
     "both map to frame 3"),
    ("v.json", {"images": [{"id": 1, "frame_index": 3}], "annotations": [{"image_id": 9, "bbox": [1, 1, 2, 2]}]},
     "annotation 0: image_id 9 is not among the images"),
    ("v.json", {"images": [{"id": 1, "frame_index": 3}],
                "annotations": [{"image_id": 1, "bbox": [1, 1, 2, 2], "keypoints": [1, 2, 2]}]}, "keypoints"),
    ("v.json", {"images": [{"id": 1, "frame_index": 3}], "annotations": [{"image_id": 1, "bbox": [1, 1, 0, 2]}]},
     "width and height must be positive"),
    ("v.json", {"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}, "no category named 'person'"),
    ("v.json", {"people": []}, "not a kpr-sidecar-v1 sidecar, nor a PoseTrack21 or COCO json"),
    ("v.txt", "1,2,3", "line 1: expected frame,id,x,y,w,h"),
    ("v.txt", "1,1,10,20,30,60\n0,1,10,20,30,60", "line 2: frame must be an integer >= 1"),
    ("v.txt", "1,1,ten,20,30,60", "line 1: not a row of numbers"),
    ("v.gt.txt", "1,1,10,20,-30,60", "box width and height must be positive"),
]


@pytest.mark.parametrize("name, content, problem", BAD_FILES)
def test_bad_annotation_files_name_the_file_and_the_problem(tmp_path, name, content, problem):
    (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(AnnotationError, match=rf"{tmp_path / name}.*{problem}"):
        make_backend(BackendConfig()).detect(str(tmp_path / "v.mp4"), _frames([0]))


COCO_ANNOTATION = st.fixed_dictionaries({}, optional={
    "image_id": st.sampled_from([1, 2, "x", None]), "category_id": st.sampled_from([1, 2]),
    "bbox": st.lists(st.floats(-1e3, 1e3) | st.none(), max_size=5), "iscrowd": st.booleans(),
    "keypoints": st.lists(st.integers(-5, 5) | st.floats(allow_nan=True), max_size=52) | st.none(),
    "track_id": st.integers() | st.text(max_size=3) | st.none() | st.booleans(), "score": st.floats() | st.text(max_size=2)})
COCO_IMAGE = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from([1, 2, "x", None, True]), "file_name": st.text(max_size=8), "vid_id": st.just("1"),
    "frame_index": st.integers(-2, 5) | st.text(max_size=2), "frame_id": st.integers(-2, 10**12)})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=st.lists(COCO_IMAGE, max_size=3), annotations=st.lists(COCO_ANNOTATION, max_size=3),
       names=st.none() | st.lists(st.sampled_from(POSETRACK_KEYPOINTS + ["tail"]), max_size=17),
       mot=st.lists(st.lists(st.sampled_from(["1", "2", "-1", "0", "7", "2.5", "1e400", "x", ""]), max_size=10), max_size=4))
def test_fuzzed_annotation_files_parse_or_give_annotation_errors(tmp_path, images, annotations, names, mot):
    document = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person", "keypoints": names}]}
    (tmp_path / "v.json").write_text(json.dumps(document))
    (tmp_path / "v.txt").write_text("\n".join(",".join(row) for row in mot))
    for path in (tmp_path / "v.json", tmp_path / "v.txt"):
        try:
            sidecar = load_sidecar(path)
        except AnnotationError:
            continue
        for index, people in sidecar.frames.items():
            assert isinstance(index, int) and index >= 0
            for p in people:
                assert p.bbox.shape == (4,) and np.all(np.isfinite(p.bbox)) and p.bbox[2] > 0 and p.bbox[3] > 0
                assert p.keypoints.shape == (17, 3) and set(np.unique(p.keypoints[:, 2])) <= {0.0, 1.0}
                assert p.track_id is None or isinstance(p.track_id, str)


@pytest.mark.parametrize("fields, problem", [
    ({"name": "mmpose"}, r"unknown detection backend 'mmpose' \(choices: annotations, yolox, openpifpaf\)"),
    ({"name": "yolox"}, "the yolox backend needs --detector-model"),
    ({"name": "yolox", "detector_model": "/no/such.onnx"}, "/no/such.onnx: YOLOX ONNX detector model not found"),
    ({"pose_model": "/no/pose.tflite"}, "/no/pose.tflite: MoveNet pose model not found"),
    ({"name": "openpifpaf"}, "the openpifpaf backend needs --openpifpaf-checkpoint"),
    ({"name": "openpifpaf", "openpifpaf_checkpoint": "/no/ckpt.pkl"}, "/no/ckpt.pkl: OpenPifPaf checkpoint not found"),
    ({"name": "openpifpaf", "pose_model": "/no/pose.tflite"}, "finds keypoints itself: drop --pose-model"),
    ({"min_score": 1.5}, r"min_score must be a number in \[0, 1\]"),
])
def test_backend_choice_errors_are_one_clear_line_when_the_choice_is_made(fields, problem):
    with pytest.raises(WorkerError, match=problem):
        BackendConfig(**fields)


def test_only_the_model_backends_use_a_gpu(tmp_path):
    detector = tmp_path / "yolox.onnx"
    detector.write_bytes(b"")
    yolox = BackendConfig("yolox", detector_model=str(detector))
    assert yolox.uses_gpu("cuda:1") and not yolox.uses_gpu("cpu") and not BackendConfig().uses_gpu("cuda")


def test_openpifpaf_backend_needs_the_package_or_loads_a_real_checkpoint(tmp_path):
    checkpoint = tmp_path / "not_a_model.pkl"
    checkpoint.write_bytes(b"not a pickle")
    try:
        import openpifpaf  # noqa: F401
    except ImportError:
        with pytest.raises(WorkerError, match=f"^{re.escape(INSTALL_HINT)}$"):
            BackendConfig("openpifpaf", openpifpaf_checkpoint=str(checkpoint))
        return
    with pytest.raises(WorkerError, match="not_a_model.pkl: not a loadable OpenPifPaf checkpoint"):
        make_backend(BackendConfig("openpifpaf", openpifpaf_checkpoint=str(checkpoint)))


def test_openpifpaf_random_weights_checkpoint_runs_on_a_frame(tmp_path):
    openpifpaf = pytest.importorskip("openpifpaf", reason="openpifpaf is an optional extra (scripts/install_openpifpaf.sh)")
    import torch

    torch.manual_seed(0)
    factory = openpifpaf.network.Factory(base_name="shufflenetv2k16")
    network, _ = factory.factory(head_metas=openpifpaf.plugins.coco.CocoKp().head_metas)
    torch.save({"model": network, "epoch": 0}, tmp_path / "random.pkl")
    backend = make_backend(BackendConfig("openpifpaf", openpifpaf_checkpoint=str(tmp_path / "random.pkl"), min_score=0.0))
    image = np.random.default_rng(0).integers(0, 255, (97, 129, 3), dtype=np.uint8)
    [people] = backend.detect("v.mp4", _frames([0], image))
    for person in people:
        assert person.keypoints.shape == (17, 3) and person.bbox[2] > 0 and person.bbox[3] > 0
        assert 0 <= person.bbox[0] and person.bbox[0] + person.bbox[2] <= 129 + 1e-3
