"""The synthetic multi-camera world: determinism, decodable videos, truthful annotations, ReID crops layout."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import decord
import numpy as np
import pytest

from kpr_model.config import KPRConfig
from training.datasets import DatasetError
from training.datasets.common import read_keypoints_file
from training.datasets.market1501 import read_reid_layout
from training.samples import load_samples
from training.synthetic import (CameraRenderer, World, WorldConfig, build_world, export_reid_crops, generate_archive,
                                shared_colours)

COLOUR_TOLERANCE = 40.0


def _sidecars(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("cam*/*.json"))}


def _world_of(root: Path) -> World:
    return build_world(WorldConfig.from_dict(json.loads((root / "world.json").read_text())["config"]))


def _decoded_bgr(video: Path) -> np.ndarray:
    reader = decord.VideoReader(str(video))
    return reader.get_batch(list(range(len(reader)))).asnumpy()[..., ::-1]


def _pixel(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """Median colour of the 3x3 patch at a keypoint (robust to sensor noise and codec ringing)."""
    px, py = int(np.rint(x)), int(np.rint(y))
    return np.median(image[max(py - 1, 0):py + 2, max(px - 1, 0):px + 2].reshape(-1, 3).astype(float), axis=0)


def _distance(colours: np.ndarray, pixel: np.ndarray) -> float:
    """Max-channel distance from a pixel to the nearest of ``colours`` or blend of two of them (part boundaries)."""
    colours = colours.astype(float)
    best = float(np.abs(colours - pixel).max(axis=1).min())
    for i, a in enumerate(colours):
        for b in colours[i + 1:]:
            t = np.clip(np.dot(pixel - a, b - a) / max(float(np.dot(b - a, b - a)), 1e-9), 0.0, 1.0)
            best = min(best, float(np.abs(a + t * (b - a) - pixel).max()))
    return best


def _inside(box: list[int], x: float, y: float) -> bool:
    return box[0] <= x < box[0] + box[2] and box[1] <= y < box[1] + box[3]


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """ReID crops of the small world, exported once for this module."""
    root = tmp_path_factory.mktemp("crops")
    export_reid_crops(root, WorldConfig.small(seed=3))
    return root


def test_config_validates_and_round_trips() -> None:
    config = WorldConfig.small(seed=5)
    assert WorldConfig.from_dict(config.to_dict()) == config
    assert config.num_frames == 80 and config.camera_ids == ("cam1", "cam2", "cam3")
    with pytest.raises(ValueError, match="n_cameras"):
        WorldConfig(n_cameras=1)
    with pytest.raises(ValueError, match="unknown WorldConfig keys"):
        WorldConfig.from_dict({"seed": 1, "colour": "red"})


def test_identities_share_garments_but_stay_distinct() -> None:
    world = build_world(WorldConfig(n_identities=20))
    shared = shared_colours(world.identities)
    assert shared["torso"] and shared["trousers"]
    for garment in ("torso", "trousers"):
        for names in shared[garment].values():
            assert all(n in {i.name for i in world.identities} for n in names)
    appearances = [i.appearance for i in world.identities]
    assert len(set(appearances)) == len(appearances)
    assert len({i.shape.height_m for i in world.identities}) > 10


def test_same_seed_gives_identical_archive_and_other_seed_differs(small_archive: Path, tmp_path: Path) -> None:
    config = WorldConfig.from_dict(json.loads((small_archive / "world.json").read_text())["config"])
    again = generate_archive(tmp_path / "again", config)
    for video in again:
        original = small_archive / video.relative_to(tmp_path / "again")
        assert video.with_suffix(".json").read_bytes() == original.with_suffix(".json").read_bytes()
        assert video.read_bytes() == original.read_bytes()
    assert (tmp_path / "again" / "world.json").read_bytes() == (small_archive / "world.json").read_bytes()
    other = generate_archive(tmp_path / "other", WorldConfig.from_dict({**config.to_dict(), "seed": config.seed + 1}))
    assert other[0].with_suffix(".json").read_bytes() != again[0].with_suffix(".json").read_bytes()


def test_videos_decode_frame_exact_with_sidecar_counts(small_archive: Path) -> None:
    world = _world_of(small_archive)
    compared = closer = 0
    for camera in world.cameras:
        video = next((small_archive / camera.camera_id).glob("*.mp4"))
        sidecar = json.loads(video.with_suffix(".json").read_text())
        assert sidecar["format"] == "kpr-sidecar-v1" and sidecar["camera_id"] == camera.camera_id
        reader = decord.VideoReader(str(video))
        assert len(reader) == sidecar["num_frames"] == len(sidecar["frames"]) == world.config.num_frames
        assert reader.get_avg_fps() == pytest.approx(sidecar["fps"])
        assert reader[0].shape == (sidecar["height"], sidecar["width"], 3)
        decoded = _decoded_bgr(video).astype(float)
        renderer = CameraRenderer(world, camera.index)
        for index in range(world.config.num_frames):
            rendered = renderer.render(index).image.astype(float)
            assert np.abs(decoded[index] - rendered).mean() < 6.0
            neighbour = index - 1 if index else index + 1
            people = np.zeros(rendered.shape[:2], bool)
            for x, y, w, h in (d["bbox"] for i in (index, neighbour) for d in sidecar["frames"][i]["detections"]):
                people[y:y + h, x:x + w] = True
            if people.any():
                compared += 1
                own = np.abs(decoded[index] - rendered)[people].mean()
                closer += own < np.abs(decoded[neighbour] - rendered)[people].mean()
    assert compared > 100 and closer / compared > 0.95


def test_sidecar_detections_are_consistent(small_archive: Path) -> None:
    for sidecar in _sidecars(small_archive).values():
        seen: dict[int, list[int]] = defaultdict(list)
        for frame in sidecar["frames"]:
            tracks = [d["track_id"] for d in frame["detections"]]
            assert len(tracks) == len(set(tracks))
            for d in frame["detections"]:
                x, y, w, h = d["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= sidecar["width"] and y + h <= sidecar["height"]
                assert len(d["keypoints"]) == 17 and {v for _, _, v in d["keypoints"]} <= {0, 1, 2}
                assert 0.0 <= d["visible_fraction"] <= 1.0
                assert sidecar["tracks"][str(d["track_id"])]["identity"] == d["identity"]
                if d["target"]:
                    assert d["visible_fraction"] >= 0.3 and h >= 40
                seen[d["track_id"]].append(frame["frame_index"])
        for frames in seen.values():
            assert frames == list(range(frames[0], frames[-1] + 1))
        assert sum(d["target"] for f in sidecar["frames"] for d in f["detections"]) > 0


def test_every_identity_appears_in_two_cameras(small_archive: Path) -> None:
    world = _world_of(small_archive)
    cameras_of: dict[str, set[str]] = defaultdict(set)
    for camera, sidecar in _sidecars(small_archive).items():
        for frame in sidecar["frames"]:
            for d in frame["detections"]:
                cameras_of[d["identity"]].add(camera)
    assert set(cameras_of) == {i.name for i in world.identities}
    assert all(len(cameras) >= 2 for cameras in cameras_of.values())
    for identity in range(len(world.identities)):
        own = sorted((v.t_start, v.t_end) for v in world.visits if v.identity == identity)
        assert all(end <= start for (_, end), (start, _) in zip(own, own[1:]))


def test_visible_keypoints_show_their_part_and_occluded_ones_do_not(small_archive: Path) -> None:
    world = _world_of(small_archive)
    visible = matches = other_matches = 0
    behind_occluder = shows_occluder = distinguishable = shows_part = 0
    multi_person_boxes = 0
    for camera in world.cameras:
        video = next((small_archive / camera.camera_id).glob("*.mp4"))
        sidecar = json.loads(video.with_suffix(".json").read_text())
        frames = _decoded_bgr(video)
        occluders = CameraRenderer(world, camera.index).occluder_layers()
        for frame in sidecar["frames"]:
            image = frames[frame["frame_index"]]
            detections = frame["detections"]
            for d in detections:
                others = [e for e in detections if e is not d]
                if any(v == 2 and _inside(d["bbox"], x, y) for e in others for x, y, v in e["keypoints"]):
                    multi_person_boxes += 1
                identity = world.identities[int(d["identity"][2:]) - 1]
                stranger = world.identities[int(d["identity"][2:]) % len(world.identities)]
                for k, (x, y, v) in enumerate(d["keypoints"]):
                    if v == 0:
                        continue
                    pixel = _pixel(image, x, y)
                    own = camera.look.tone(identity.appearance.keypoint_colours(k))
                    if v == 2 and d["bbox"][3] >= 60:
                        visible += 1
                        matches += _distance(own, pixel) <= COLOUR_TOLERANCE
                        other_matches += _distance(camera.look.tone(stranger.appearance.keypoint_colours(k)),
                                                   pixel) <= COLOUR_TOLERANCE
                    px, py = int(np.rint(x)), int(np.rint(y))
                    feet = d["bbox"][1] + d["bbox"][3]
                    nearer = [layer for base, layer, mask in occluders if base > feet + 2 and mask[py, px]]
                    if v == 1 and nearer and not any(_inside(e["bbox"], x, y) for e in others):
                        behind_occluder += 1
                        occluder = camera.look.tone(nearer[0][py, px][None])
                        shows_occluder += _distance(occluder, pixel) <= COLOUR_TOLERANCE
                        if _distance(own, occluder[0].astype(float)) > COLOUR_TOLERANCE:
                            distinguishable += 1
                            shows_part += _distance(own, pixel) <= _distance(occluder, pixel)
    assert visible > 200 and matches / visible > 0.9
    assert other_matches / visible < 0.6
    assert behind_occluder > 0 and shows_occluder / behind_occluder > 0.85
    assert distinguishable > 20 and shows_part / distinguishable < 0.1
    assert multi_person_boxes > 0


def test_crops_layout_reads_back_with_disjoint_identities(crops: Path) -> None:
    splits = {s: read_reid_layout(crops, s) for s in ("train", "query", "gallery")}
    assert all(splits.values())
    train_pids = {s.pid for s in splits["train"]}
    test_pids = {s.pid for s in splits["gallery"]}
    assert train_pids and test_pids and not train_pids & test_pids
    assert {s.pid for s in splits["query"]} <= test_pids
    for query in splits["query"]:
        assert any(g.pid == query.pid and g.camid != query.camid for g in splits["gallery"])
    for folder, samples in zip(("bounding_box_train", "query", "bounding_box_test"), splits.values()):
        for sample in samples:
            raw = json.loads((crops / "external_annotation" / "synthetic" / folder /
                              f"{sample.image_path.name}_keypoints.json").read_text())
            assert sum(s["is_target"] for s in raw) == 1
            assert sample.keypoints is not None and sample.keypoints.shape == (17, 3)
            assert sample.keypoints.dtype == np.float32 and sample.keypoints[:, 2].max() == 1.0
            assert sample.negative_keypoints.shape == (len(raw) - 1, 17, 3)
            mask = np.load(sample.mask_path)
            assert mask.dtype == np.uint8 and mask.max() <= 8 and mask.any()
            rows = {label: np.nonzero(mask == label)[0].mean() for label in (1, 4, 7, 8) if (mask == label).any()}
            if len(rows) == 4:
                assert rows[1] < rows[4] < min(rows[7], rows[8])
    assert any(len(s.negative_keypoints) for samples in splits.values() for s in samples)
    first = splits["train"][0]
    item = load_samples([first], KPRConfig.tiny())[0]
    assert item.image.dtype == np.uint8 and item.image.shape[2] == 3
    assert item.mask.shape == item.image.shape[:2]
    assert (item.pid, item.camid) == (first.pid, first.camid)


def test_incomplete_layout_raises_naming_what_is_missing(crops: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(crops, broken)
    shutil.rmtree(broken / "query")
    with pytest.raises(DatasetError, match="query"):
        read_reid_layout(broken, "train")
    with pytest.raises(DatasetError, match="dataset root"):
        read_reid_layout(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="keypoints folder"):
        read_reid_layout(crops, "train", kp_dir="pifpaf")
    samples = read_reid_layout(crops, "train", kp_dir=None, masks_dir=None)
    assert samples[0].keypoints is None and samples[0].mask_path is None


def test_keypoints_file_variants(tmp_path: Path) -> None:
    skeleton = [[float(i), float(i), 1.0] for i in range(17)]
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"keypoints": [v for kp in skeleton for v in kp]}))
    target, negatives = read_keypoints_file(single)
    assert target is not None and target[3, 0] == 3.0 and negatives.shape == (0, 17, 3)
    unflagged = tmp_path / "unflagged.json"
    unflagged.write_text(json.dumps([{"keypoints": skeleton}, {"keypoints": skeleton}]))
    assert read_keypoints_file(unflagged)[1].shape == (1, 17, 3)
    two_targets = tmp_path / "two.json"
    two_targets.write_text(json.dumps([{"keypoints": skeleton, "is_target": True}] * 2))
    with pytest.raises(DatasetError, match="exactly one"):
        read_keypoints_file(two_targets)
