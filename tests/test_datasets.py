"""Dataset readers on tiny fixtures written in each dataset's exact on-disk format."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from kpr_model.config import KPRConfig
from training.datasets import DATASETS, DatasetError, load_dataset
from training.datasets.market1501 import read_reid_layout
from training.samples import load_samples
from training.synthetic import WorldConfig, export_reid_crops

KP_DIR = "pifpaf_keypoints_pifpaf_maskrcnn_filtering"
MASKS_DIR = "pifpaf_maskrcnn_filtering"


def _image(path: Path, width: int = 16, height: int = 32, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), value, np.uint8))


def _skeleton(x: float, conf: float = 0.9) -> list[list[float]]:
    """17 joints on a vertical line at ``x``; joint j at y = j."""
    return [[x, float(j), conf] for j in range(17)]


def _json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def _mask(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.full((32, 16), label, np.uint8))


def _market_dataset(root: Path, files: dict[str, list[str]], kp_dir: str = KP_DIR, masks_dir: str = MASKS_DIR,
                    masks_suffix: str = ".npy") -> Path:
    """A Market-layout folder; each image's keypoints: a target at x = pid and a non-target at x = 100 + pid."""
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            _image(root / folder / name)
            pid = abs(int(name.split("_")[0]))
            _json(root / "external_annotation" / kp_dir / folder / f"{name}_keypoints.json",
                  [{"keypoints": _skeleton(100 + pid), "is_target": False},
                   {"keypoints": _skeleton(pid), "is_target": True}])
            _mask(root / "masks" / masks_dir / folder / f"{Path(name).stem}{masks_suffix}", pid % 9)
    return root


MARKET_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s2_001234_02.jpg",
                           "-1_c1s1_000000_00.jpg"],
    "query": ["0010_c1s1_001051_00.jpg"],
    "bounding_box_test": ["0010_c2s1_002051_01.jpg", "0000_c3s1_000101_02.jpg", "-1_c5s1_000401_03.jpg"],
}


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return _market_dataset(tmp_path / "Market-1501-v15.09.15", MARKET_FILES)


def test_market1501_splits_pids_cameras_keypoints_masks(market: Path) -> None:
    train = load_dataset("market1501", market.parent, "train")
    assert [s.image_path.name for s in train] == sorted(MARKET_FILES["bounding_box_train"][:3])
    assert [s.pid for s in train] == [0, 0, 1] and [s.camid for s in train] == [0, 1, 2]
    for sample, raw_pid in zip(train, (2, 2, 7)):
        assert sample.keypoints.shape == (17, 3) and np.all(sample.keypoints[:, 0] == raw_pid)
        assert sample.negative_keypoints.shape == (1, 17, 3)
        assert np.all(sample.negative_keypoints[0, :, 0] == 100 + raw_pid)
        assert np.load(sample.mask_path).max() == raw_pid % 9
    query = load_dataset("market1501", market, "query")
    assert [(s.pid, s.camid) for s in query] == [(10, 0)]
    gallery = load_dataset("Market1501", market, "gallery")
    assert sorted((s.pid, s.camid) for s in gallery) == [(0, 2), (10, 1)]
    bare = load_dataset("market1501", market, "gallery", kp_dir=None, masks_dir=None)
    assert all(s.keypoints is None and s.mask_path is None and len(s.negative_keypoints) == 0 for s in bare)


def test_market_layout_errors_name_what_is_wrong(market: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset root not found"):
        load_dataset("market1501", tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match=f"keypoints folder not found: .*{KP_DIR}2"):
        load_dataset("market1501", market, "train", kp_dir=KP_DIR + "2")
    renamed = market / "external_annotation" / KP_DIR / "query" / "0010_c1s1_001051_00.jpg_keypoints.json"
    renamed.rename(renamed.with_name("0010_c1s1_001051_00_keypoints.json"))
    with pytest.raises(DatasetError, match="no keypoints files .*0010_c1s1_001051_00.jpg_keypoints.json"):
        load_dataset("market1501", market, "query")
    (market / "masks" / MASKS_DIR / "bounding_box_test" / "0010_c2s1_002051_01.npy").unlink()
    gallery = load_dataset("market1501", market, "gallery")
    assert [s.mask_path is None for s in gallery] == [False, True]
    _json(market / "external_annotation" / KP_DIR / "bounding_box_test" / "0000_c3s1_000101_02.jpg_keypoints.json",
          [{"keypoints": [1, 2, 3]}])
    with pytest.raises(DatasetError, match="0000_c3s1_000101_02.jpg_keypoints.json: a skeleton needs"):
        load_dataset("market1501", market, "gallery")
    _image(market / "bounding_box_train" / "img_0003.jpg")
    with pytest.raises(DatasetError, match="'img_0003.jpg' is not Market-1501 style"):
        load_dataset("market1501", market, "train")
    shutil.rmtree(market / "query")
    with pytest.raises(DatasetError, match="missing query/"):
        load_dataset("market1501", market, "gallery")


def test_without_masks_or_keypoints_folders_a_dataset_reads_with_a_note(market: Path, caplog) -> None:
    shutil.rmtree(market / "masks")
    with caplog.at_level(logging.WARNING):
        train = load_dataset("market1501", market, "train")
    assert all(s.mask_path is None and s.keypoints is not None for s in train)
    assert f"no masks folder under {market} (expected {market / 'masks' / MASKS_DIR / 'bounding_box_train'})" \
        in caplog.text and "training then skips the body-part attention loss" in caplog.text
    (market / "masks" / "other_masks").mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"masks folder not found: .*{MASKS_DIR}/bounding_box_train"):
        load_dataset("market1501", market, "train")
    shutil.rmtree(market / "external_annotation")
    shutil.rmtree(market / "masks")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        gallery = load_dataset("market1501", market, "gallery")
    assert all(s.keypoints is None and s.mask_path is None for s in gallery)
    assert "no keypoints folder" in caplog.text and "without keypoint prompts" in caplog.text


def test_occluded_duke_names_cameras_and_mask_suffix(tmp_path: Path) -> None:
    files = {"bounding_box_train": ["0001_c2_f0046182.jpg", "0005_c8_f0000123.jpg"],
             "query": ["0011_c1_f0000456.jpg"], "bounding_box_test": ["0011_c6_f0000789.jpg", "0012_c6_f0000790.jpg"]}
    duke = _market_dataset(tmp_path / "Occluded_Duke", files, kp_dir=KP_DIR + "_v3",
                           masks_suffix=".jpg.confidence_fields.npy")
    train = load_dataset("occluded_duke", tmp_path, "train")
    assert [(s.pid, s.camid) for s in train] == [(0, 1), (1, 7)]
    assert [s.mask_path.name for s in train] == ["0001_c2_f0046182.jpg.confidence_fields.npy",
                                                  "0005_c8_f0000123.jpg.confidence_fields.npy"]
    assert [(s.pid, s.camid) for s in load_dataset("occluded_duke", duke, "gallery")] == [(11, 5), (12, 5)]
    _image(duke / "query" / "0013_c9_f0000001.jpg")
    with pytest.raises(DatasetError, match="0013_c9_f0000001.jpg: camera c9 outside c1..c8"):
        load_dataset("occluded_duke", duke, "query")


@pytest.fixture
def occluded_reid(tmp_path: Path) -> Path:
    root = tmp_path / "Occluded_REID"
    layout = {"occluded_body_images": ["001/001_01.tif", "002/002_01.tif"],
              "whole_body_images": ["001/001_01.tif", "001/001_02.tif", "002/002_01.tif"]}
    for folder, names in layout.items():
        for name in names:
            _image(root / folder / name)
            pid = int(Path(name).name[:3])
            _json(root / "external_annotation" / KP_DIR / folder / f"{Path(name).name}_keypoints.json",
                  [{"keypoints": _skeleton(pid)}])
            _mask(root / "masks" / MASKS_DIR / folder / f"{Path(name).stem}.npy", pid)
    return root


def test_occluded_reid_query_is_occluded_gallery_is_whole_body(occluded_reid: Path) -> None:
    query = load_dataset("occluded_reid", occluded_reid.parent, "query")
    assert [(s.pid, s.camid) for s in query] == [(1, 0), (2, 0)]
    assert all(s.image_path.parent.parent.name == "occluded_body_images" for s in query)
    gallery = load_dataset("occluded_reid", occluded_reid, "gallery")
    assert [(s.pid, s.camid) for s in gallery] == [(1, 1), (1, 1), (2, 1)]
    assert [np.load(s.mask_path).max() for s in gallery] == [1, 1, 2]
    assert all(np.all(s.keypoints[:, 0] == s.pid) and len(s.negative_keypoints) == 0 for s in gallery)
    with pytest.raises(DatasetError, match="Occluded-ReID has no 'train' split"):
        load_dataset("occluded_reid", occluded_reid, "train")
    _image(occluded_reid / "whole_body_images" / "003" / "person3.tif")
    with pytest.raises(DatasetError, match="'person3.tif'"):
        load_dataset("occluded_reid", occluded_reid, "gallery")
    shutil.rmtree(occluded_reid / "whole_body_images")
    with pytest.raises(DatasetError, match="gallery folder not found: .*whole_body_images"):
        load_dataset("occluded_reid", occluded_reid, "gallery")


def test_partial_reid_pifpaf_files_beside_images(tmp_path: Path, caplog) -> None:
    root = tmp_path / "Partial_REID"
    for folder, names in {"partial_body_images": ["001_01.jpg", "002_01.jpg"],
                          "whole_body_images": ["001_01.jpg", "002_01.jpg", "002_02.jpg"]}.items():
        for name in names:
            image = root / folder / name
            _image(image)
            pid = int(name[:3])
            flat = [v for joint in _skeleton(pid) for v in joint]
            _json(Path(f"{image}.predictions.json"), [{"keypoints": flat, "bbox": [0, 0, 16, 32], "score": 0.8},
                                                      {"keypoints": [v + 50 for v in flat], "score": 0.4}])
            _mask(Path(f"{image}.confidence_fields.npy"), pid)
    query = load_dataset("partial_reid", tmp_path, "query")
    assert [(s.pid, s.camid) for s in query] == [(1, 0), (2, 0)]
    assert np.all(query[1].keypoints[:, 0] == 2) and np.all(query[1].negative_keypoints[0, :, 0] == 52)
    assert query[0].mask_path.name == "001_01.jpg.confidence_fields.npy"
    assert [(s.pid, s.camid) for s in load_dataset("partial_reid", root, "gallery")] == [(1, 1), (2, 1), (2, 1)]
    (root / "partial_body_images").rename(root / "occluded_body_images")
    assert len(load_dataset("partial_reid", root, "query", masks=False)) == 2
    for pifpaf_file in root.glob("occluded_body_images/*.jpg.*"):
        pifpaf_file.unlink()
    with caplog.at_level(logging.WARNING):
        bare = load_dataset("partial_reid", root, "query")
    assert all(s.keypoints is None and s.mask_path is None for s in bare)
    assert "no mask files beside the images in" in caplog.text and "without keypoint prompts" in caplog.text
    shutil.rmtree(root / "occluded_body_images")
    with pytest.raises(DatasetError, match="query folder not found: .*partial_body_images"):
        load_dataset("partial_reid", root, "query")


def test_synthetic_world_export_reads_back_relabelled_for_training(tmp_path: Path) -> None:
    export = export_reid_crops(tmp_path / "crops", WorldConfig.small(seed=1), frame_stride=10)
    train = load_dataset("synthetic", export.root, "train")
    raw = read_reid_layout(export.root, "train")
    assert len(train) == export.counts["bounding_box_train"] == len(raw)
    assert sorted({s.pid for s in train}) == list(range(len(export.train_identities)))
    ranks = {pid: rank for rank, pid in enumerate(sorted({s.pid for s in raw}))}
    assert [s.pid for s in train] == [ranks[s.pid] for s in raw], "read_reid_layout keeps raw pids"
    query, gallery = (load_dataset("synthetic", tmp_path / "crops", split) for split in ("query", "gallery"))
    assert len(query) == export.counts["query"] and len(gallery) == export.counts["bounding_box_test"]
    assert {s.pid for s in query} <= {s.pid for s in gallery}
    assert all(s.keypoints is not None and s.mask_path is not None for s in train + query + gallery)


# Occluded-PoseTrack-ReID: frames 200x150 (video 000001, train) and 300x200 (videos 000002 / 000003, val).
def _posetrack_video(root: Path, set_name: str, video: str, size: tuple[int, int],
                     frames: dict[int, list[dict]]) -> None:
    images, annotations = [], []
    for index, (image_id, people) in enumerate(sorted(frames.items())):
        file_name = f"images/{set_name}/{video}_mpii_{set_name}/{index:06d}.jpg"
        pixels = np.zeros((size[1], size[0], 3), np.uint8)
        pixels[:, :, 2] = np.arange(size[0]) % 256
        (root / file_name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / file_name), pixels, [cv2.IMWRITE_JPEG_QUALITY, 100])
        images.append({"is_labeled": True, "nframes": len(frames), "frame_id": image_id, "id": image_id,
                       "vid_id": video, "file_name": file_name, "has_labeled_person": True})
        for person in people:
            annotations.append({"bbox_head": [0, 0, 1, 1], "category_id": 1, "image_id": image_id, "track_id": 0,
                                **person})
    _json(root / "posetrack_data" / set_name / f"{video}_mpii_{set_name}.json",
          {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]})


def _person(det_id: int, person_id: int, bbox: list[float], joints: list[list[float]]) -> dict:
    return {"id": det_id, "person_id": person_id, "bbox": bbox, "keypoints": [v for j in joints for v in j]}


def _joints(x: float, y: float, visible: int = 1) -> list[list[float]]:
    """17 joints at (x, y + j); joints 3 and 4 (ears) are PoseTrack21's zero placeholders."""
    return [[0.0, 0.0, 0.0] if j in (3, 4) else [x, y + j, float(visible)] for j in range(17)]


def _sampling(path: Path, splits: dict[int, str]) -> None:
    _json(path, {"id": {str(k): k for k in splits}, "split": {str(k): v for k, v in splits.items()}})


@pytest.fixture
def posetrack(tmp_path: Path) -> Path:
    root = tmp_path / "PoseTrack21"
    _posetrack_video(root, "train", "000001", (200, 150), {
        10001: [_person(101, 7, [20, 10, 40, 80], _joints(30, 20)),
                _person(102, 9, [50, 10, 40, 80], _joints(55, 80)),
                _person(103, 4, [150, 10, 30, 60], _joints(160, 20))],
        10002: [_person(104, 7, [-10, 100, 40, 80], _joints(5, 110))]})
    _posetrack_video(root, "val", "000002", (300, 200), {
        20001: [_person(201, 31, [10, 20, 150, 100], _joints(85, 40)),
                _person(202, 32, [120, 20, 40, 80], _joints(130, 30))]})
    _posetrack_video(root, "val", "000003", (300, 200), {
        30001: [_person(301, 31, [200, 50, 40, 90], _joints(210, 60))],
        30002: [_person(302, 33, [0, 0, 30, 60], _joints(10, 10))]})
    reid = root / "occluded_posetrack_reid"
    _sampling(reid / "train_dataset_sampling.json", {101: "train", 102: "train", 103: "none", 104: "train"})
    _sampling(reid / "val_dataset_sampling.json", {201: "query", 202: "gallery", 301: "gallery", 302: "none"})
    _mask(reid / "masks" / "train" / "000001" / "7_000001_10001.npy", 3)
    _mask(reid / "masks" / "val" / "000002" / "31_000002_20001.npy", 5)
    _mask(reid / "masks" / "val" / "000003" / "31_000003_30001.npy", 6)
    return root


def test_occluded_posetrack_cuts_crops_and_maps_keypoints(posetrack: Path) -> None:
    train = load_dataset("occ_posetrack21", posetrack.parent, "train")
    crops = posetrack / "occluded_posetrack_reid" / "images" / "train" / "000001"
    assert [s.image_path for s in train] == [crops / "7_000001_10001.jpg", crops / "9_000001_10001.jpg",
                                             crops / "7_000001_10002.jpg"]
    assert [(s.pid, s.camid) for s in train] == [(0, 0), (1, 0), (0, 0)]
    first = train[0]
    assert cv2.imread(str(first.image_path)).shape == (80, 40, 3)
    np.testing.assert_allclose(first.keypoints[0], [10, 10, 1])
    assert np.all(first.keypoints[[3, 4]] == 0)
    assert first.negative_keypoints.shape == (1, 17, 3), "the other person in the box; the far one is dropped"
    np.testing.assert_allclose(first.negative_keypoints[0, 0], [35, 70, 1])
    assert np.all(first.negative_keypoints[0, 10:] == 0), "joints below the target box are zeroed"
    assert np.load(first.mask_path).max() == 3 and train[1].mask_path is None
    clipped = train[2]
    assert cv2.imread(str(clipped.image_path)).shape == (50, 30, 3), "box clipped to the frame"
    np.testing.assert_allclose(clipped.keypoints[0], [5, 10, 1])

    query = load_dataset("occ_posetrack21", posetrack, "query")
    assert [(s.pid, s.camid) for s in query] == [(31, 0)]
    crop = cv2.imread(str(query[0].image_path))
    assert crop.shape == (384, 128, 3), "boxes wider than 128 are resized to 128x384"
    assert abs(int(crop[200, 64, 2]) - 85) <= 3, "crop holds the frame's pixels of the box"
    np.testing.assert_allclose(query[0].keypoints[0], [75 * 128 / 150, 20 * 384 / 100, 1], rtol=1e-5)
    assert np.load(query[0].mask_path).max() == 5
    gallery = load_dataset("occ_posetrack21", posetrack, "gallery")
    assert [(s.pid, s.camid) for s in gallery] == [(32, 0), (31, 1)]
    assert not DATASETS["occ_posetrack21"].drop_same_camera

    stamp = os.stat(first.image_path).st_mtime_ns
    again = load_dataset("occ_posetrack21", posetrack, "train")
    assert os.stat(first.image_path).st_mtime_ns == stamp, "existing crops are reused"
    np.testing.assert_array_equal(again[0].keypoints, first.keypoints)


def test_occluded_posetrack_reads_the_authors_pifpaf_field_masks(posetrack: Path) -> None:
    fields = np.zeros((36, 96, 32), np.float32)  # pose_on_img_crops: 17 + 19 PifPaf fields at 96x32
    fields[15, 80:] = 0.9  # the left ankle field feeds the left foot, index 6 of the "eight" parts
    np.save(posetrack / "occluded_posetrack_reid" / "masks" / "val" / "000002" / "31_000002_20001.npy", fields)
    mask = load_samples(load_dataset("occ_posetrack21", posetrack, "query"), KPRConfig.tiny())[0].mask
    assert mask.shape == (8, 96, 32) and mask[6, 80:].min() == pytest.approx(0.9) and mask[:6].max() == 0


def test_occluded_posetrack_errors_name_what_is_missing(posetrack: Path, tmp_path: Path) -> None:
    reid = posetrack / "occluded_posetrack_reid"
    shutil.rmtree(reid / "masks" / "train")
    with pytest.raises(DatasetError, match="masks folder not found: .*occluded_posetrack_reid/masks/train"):
        load_dataset("occ_posetrack21", posetrack, "train")
    shutil.rmtree(reid / "masks")
    assert all(s.mask_path is None for s in load_dataset("occ_posetrack21", posetrack, "train"))
    _sampling(reid / "val_dataset_sampling.json", {201: "query", 999: "gallery"})
    with pytest.raises(DatasetError, match="val_dataset_sampling.json are missing from .*posetrack_data/val .*id 999"):
        load_dataset("occ_posetrack21", posetrack, "gallery")
    (reid / "val_dataset_sampling.json").write_text('{"id": [201], "split": ["query"]}')
    with pytest.raises(DatasetError, match="val_dataset_sampling.json: expected"):
        load_dataset("occ_posetrack21", posetrack, "query")
    (reid / "val_dataset_sampling.json").unlink()
    with pytest.raises(DatasetError, match="dataset sampling file not found: .*val_dataset_sampling.json"):
        load_dataset("occ_posetrack21", posetrack, "query")
    (posetrack / "images" / "train" / "000001_mpii_train" / "000001.jpg").unlink()
    with pytest.raises(DatasetError, match="frame missing or unreadable: .*000001_mpii_train/000001.jpg"):
        load_dataset("occ_posetrack21", posetrack, "train", masks=False, crops_dir=tmp_path / "crops")
    (posetrack / "posetrack_data" / "train" / "000001_mpii_train.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="000001_mpii_train.json: not a PoseTrack21 annotation file"):
        load_dataset("occ_posetrack21", posetrack, "train", masks=False)


def test_load_dataset_rejects_unknown_names_splits_and_options(market: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'duke'; known: market1501, occluded_duke"):
        load_dataset("duke", market, "train")
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset("market1501", market, "val")
    with pytest.raises(DatasetError, match="takes no option crops_dir .*kp_dir, masks_dir, masks_suffix"):
        load_dataset("market1501", market, "train", crops_dir="x")
