"""The KPR authors' part masks (PifPaf confidence fields [36, h, w]) read, grouped and turned into targets as
officially, on tiny files in the published layouts; part-label masks [h, w] keep working beside them."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kpr_model.config import KPRConfig
from kpr_model.losses import KPRLoss, body_part_attention_loss
from kpr_model.model import KPR
from training.augment import AugmentConfig, augment, occlude
from training.datasets import DatasetError, load_dataset
from training.datasets.part_masks import group_pifpaf_fields, read_part_mask
from training.samples import load_samples, make_batch, part_probabilities

# The official field order (17 COCO keypoints, then PifPaf's 19 connections), written out here by hand.
FIELD = {name: i for i, name in enumerate([
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_ankle_to_left_knee", "left_knee_to_left_hip", "right_ankle_to_right_knee",
    "right_knee_to_right_hip", "left_hip_to_right_hip", "left_shoulder_to_left_hip", "right_shoulder_to_right_hip",
    "left_shoulder_to_right_shoulder", "left_shoulder_to_left_elbow", "right_shoulder_to_right_elbow",
    "left_elbow_to_left_wrist", "right_elbow_to_right_wrist", "left_eye_to_right_eye", "nose_to_left_eye",
    "nose_to_right_eye", "left_eye_to_left_ear", "right_eye_to_right_ear", "left_ear_to_left_shoulder",
    "right_ear_to_right_shoulder"])}
HEAD, LEFT_ARM, RIGHT_ARM, TORSO, LEFT_LEG, RIGHT_LEG, LEFT_FOOT, RIGHT_FOOT = range(8)
CONFIG = KPRConfig.tiny()


def _fields(height: int = 12, width: int = 5, **lit: float) -> np.ndarray:
    """PifPaf fields [36, h, w] (float32, as published), zero but for the named fields set to a value everywhere."""
    fields = np.zeros((36, height, width), np.float32)
    for name, value in lit.items():
        fields[FIELD[name]] = value
    return fields


def test_each_field_feeds_the_parts_of_the_official_eight_grouping():
    expected = {  # official CombinePifPafIntoEightBodyMasks, part by part
        "nose": [HEAD], "left_eye_to_left_ear": [HEAD], "right_ear_to_right_shoulder": [HEAD],
        "left_shoulder": [LEFT_ARM], "left_elbow_to_left_wrist": [LEFT_ARM], "right_wrist": [RIGHT_ARM],
        "left_shoulder_to_right_shoulder": [TORSO], "right_hip": [TORSO], "right_shoulder_to_right_hip": [TORSO],
        "left_hip_to_right_hip": [TORSO, LEFT_LEG], "left_knee_to_left_hip": [LEFT_LEG],
        "left_ankle_to_left_knee": [LEFT_LEG], "right_knee": [RIGHT_LEG], "right_ankle_to_right_knee": [RIGHT_LEG],
        "left_ankle": [LEFT_FOOT], "right_ankle": [RIGHT_FOOT],
    }
    for name, parts in expected.items():
        grouped = group_pifpaf_fields(_fields(**{name: 0.7}), "eight")
        assert grouped.shape == (8, 12, 5) and grouped.dtype == np.float32
        assert [k for k in range(8) if grouped[k].max() > 0] == parts, name
    lit = _fields(left_elbow=0.4, left_wrist=1.6, left_shoulder_to_left_elbow=0.9, right_eye=-0.5)
    grouped = group_pifpaf_fields(lit, "eight")
    assert np.all(grouped[LEFT_ARM] == 1.0) and np.all(grouped[HEAD] == 0.0)  # max of the fields, clipped to [0, 1]


def test_each_field_feeds_the_parts_of_the_official_five_v_grouping():
    head, upper, lower, legs, feet = range(5)
    expected = {  # official CombinePifPafIntoFiveVerticalParts, field by field (two connections feed no part)
        "nose": [head], "left_eye": [head], "right_eye": [head], "left_ear": [head], "right_ear": [head],
        "left_shoulder": [upper], "right_shoulder": [upper], "left_elbow": [upper], "right_elbow": [upper],
        "left_wrist": [lower], "right_wrist": [lower], "left_hip": [lower, legs], "right_hip": [lower, legs],
        "left_knee": [legs], "right_knee": [legs], "left_ankle": [feet], "right_ankle": [feet],
        "left_ankle_to_left_knee": [legs], "left_knee_to_left_hip": [legs], "right_ankle_to_right_knee": [legs],
        "right_knee_to_right_hip": [legs], "left_hip_to_right_hip": [], "left_shoulder_to_left_hip": [],
        "right_shoulder_to_right_hip": [lower], "left_shoulder_to_right_shoulder": [upper],
        "left_shoulder_to_left_elbow": [upper], "right_shoulder_to_right_elbow": [upper],
        "left_elbow_to_left_wrist": [lower], "right_elbow_to_right_wrist": [lower], "left_eye_to_right_eye": [head],
        "nose_to_left_eye": [head], "nose_to_right_eye": [head], "left_eye_to_left_ear": [head],
        "right_eye_to_right_ear": [head], "left_ear_to_left_shoulder": [head], "right_ear_to_right_shoulder": [head],
    }
    assert set(expected) == set(FIELD)
    for name, parts in expected.items():
        grouped = group_pifpaf_fields(_fields(**{name: 0.7}), "five_v")
        assert grouped.shape == (5, 12, 5) and grouped.dtype == np.float32
        assert [k for k in range(5) if grouped[k].max() > 0] == parts, name


def test_targets_are_background_below_half_then_the_strongest_part_at_feature_resolution():
    parts = group_pifpaf_fields(_fields(left_elbow=0.6, left_hip=0.55, right_knee=0.3), "eight")
    weak = group_pifpaf_fields(_fields(left_elbow=0.45, right_knee=0.3), "eight")
    probabilities = part_probabilities(parts, (64, 32))
    assert probabilities.shape == (9, 64, 32)
    assert torch.allclose(probabilities.sum(0), torch.ones(64, 32))
    # softmax(15 * [background, head, left arm, ..., torso, ...]) with background 0 where a part reaches 0.5
    logits = torch.tensor([0, 0, 0.6, 0, 0.55, 0, 0.3, 0, 0]) * 15
    assert torch.allclose(probabilities[:, 7, 3], torch.softmax(logits, 0), atol=1e-6)
    assert part_probabilities(weak, (64, 32))[:, 0, 0].argmax() == 0  # nothing reaches 0.5: background wins
    pixel_logits = torch.randn(2, 9, 16, 8)
    targets = torch.stack([probabilities, part_probabilities(weak, (64, 32))])
    expected = torch.stack([torch.full((16, 8), 1 + LEFT_ARM), torch.zeros(16, 8, dtype=torch.long)])
    loss = body_part_attention_loss(pixel_logits, targets, 0.1)
    assert torch.isclose(loss, F.cross_entropy(pixel_logits, expected, label_smoothing=0.1))


def test_a_part_border_follows_bilinear_resizes_then_the_argmax():
    fields = np.zeros((36, 4, 2), np.float32)
    fields[FIELD["left_wrist"], :, 0] = 1.0   # left column: left arm
    fields[FIELD["right_wrist"], :, 1] = 0.8  # right column: right arm
    targets = part_probabilities(group_pifpaf_fields(fields, "eight"), (8, 4))
    # Independent restatement: OpenCV bilinear (half-pixel centres, edges clamped) from 2 to 4 columns
    # weighs the two source columns 1/0, .75/.25, .25/.75, 0/1; background where no part reaches 0.5;
    # then a softmax of 15 x the 9 channels.
    logits = torch.zeros(9, 4)
    logits[1 + LEFT_ARM] = torch.tensor([1.0, 0.75, 0.25, 0.0])
    logits[1 + RIGHT_ARM] = 0.8 * torch.tensor([0.0, 0.25, 0.75, 1.0])
    logits[0] = (logits.max(0).values < 0.5).float()
    assert torch.allclose(targets[:, 5], torch.softmax(15 * logits, 0), atol=1e-6)
    labels = F.interpolate(targets[None], size=(4, 2), mode="bilinear").argmax(1)[0]
    assert labels.tolist() == [[1 + LEFT_ARM, 1 + RIGHT_ARM]] * 4


def _write_image(path: Path, height: int, width: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), value, np.uint8))


def _write_json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


OCCLUDED_DUKE = {
    "bounding_box_train": ["0001_c1_f0000001.jpg", "0001_c2_f0000002.jpg", "0002_c3_f0000003.jpg",
                           "0002_c4_f0000004.jpg", "0003_c5_f0000005.jpg", "0003_c6_f0000006.jpg",
                           "0004_c7_f0000007.jpg", "0004_c8_f0000008.jpg"],
    "query": ["0005_c1_f0000009.jpg", "0006_c2_f0000010.jpg"],
    "bounding_box_test": ["0005_c3_f0000011.jpg", "0006_c4_f0000012.jpg", "0007_c5_f0000013.jpg"],
}


def _occluded_duke(root: Path, with_masks: bool = True) -> Path:
    """Occluded-Duke as the authors publish it: crops, ``_v3`` keypoint files, PifPaf fields at 1/8 size."""
    base = root / "Occluded_Duke"
    for folder, names in OCCLUDED_DUKE.items():
        for index, name in enumerate(names):
            pid = int(name[:4])
            _write_image(base / folder / name, 96, 40, 40 * pid % 256)
            skeleton = [[8.0 + (j % 3) * 10, 4.0 + j * 5, 0.9] for j in range(17)]
            _write_json(base / "external_annotation" / "pifpaf_keypoints_pifpaf_maskrcnn_filtering_v3" / folder
                        / f"{name}_keypoints.json", [{"keypoints": skeleton, "is_target": True}])
            if with_masks:
                fields = _fields(12, 5, nose=0.9, left_hip=0.8, right_ankle=0.7)
                fields[:, : 3 + index % 3] *= 0.2  # a weak top band, different per crop
                mask = base / "masks" / "pifpaf_maskrcnn_filtering" / folder / f"{Path(name).stem}.jpg.confidence_fields.npy"
                mask.parent.mkdir(parents=True, exist_ok=True)
                np.save(mask, fields)
    return root


def test_official_occluded_duke_and_market_layouts_load_grouped_part_confidences(tmp_path):
    root = _occluded_duke(tmp_path)
    train = load_dataset("occluded_duke", root, "train")
    assert train[0].mask_path.name == "0001_c1_f0000001.jpg.confidence_fields.npy"
    loaded = load_samples(train, CONFIG)
    assert all(s.mask.shape == (8, 12, 5) and s.mask.dtype == np.float32 for s in loaded)
    expected = group_pifpaf_fields(np.load(train[0].mask_path), "eight")
    assert np.array_equal(loaded[0].mask, expected)
    assert np.allclose(loaded[0].mask[:, 5, 0], [0.9, 0, 0, 0.8, 0, 0, 0, 0.7])
    assert all(s.mask is None for s in load_samples(train))  # evaluation does not read masks
    market = tmp_path / "Market-1501-v15.09.15"
    _write_image(market / "bounding_box_train" / "0002_c1s1_000451_03.jpg", 128, 64, 90)
    (market / "query").mkdir()
    (market / "bounding_box_test").mkdir()
    fields_path = market / "masks" / "pifpaf_maskrcnn_filtering" / "bounding_box_train" / "0002_c1s1_000451_03.npy"
    fields_path.parent.mkdir(parents=True)
    np.save(fields_path, _fields(16, 8, left_knee=0.6))
    sample = load_samples(load_dataset("market1501", tmp_path, "train", kp_dir=None), CONFIG)[0]
    assert sample.mask.shape == (8, 16, 8) and sample.mask[LEFT_LEG].min() == pytest.approx(0.6)


def test_wrong_mask_files_are_refused_in_one_line_naming_the_file(tmp_path):
    cases = {
        "other_count.npy": np.zeros((17, 8, 4), np.float32),
        "four_dims.npy": np.zeros((1, 36, 8, 4), np.float32),
        "float_labels.npy": np.zeros((8, 4), np.float32),
        "int_fields.npy": np.zeros((36, 8, 4), np.int32),
        "big_label.npy": np.full((8, 4), 9, np.uint8),
        "nan.npy": _fields(4, 2, nose=np.nan),
    }
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(DatasetError) as error:
            read_part_mask(tmp_path / name, "eight", 8)
        assert name in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY nonsense")
    with pytest.raises(DatasetError, match="cannot read mask file .*broken.npy"):
        read_part_mask(tmp_path / "broken.npy", "eight", 8)
    assert read_part_mask(_saved(tmp_path / "labels.npy", np.full((8, 4), 3, np.int64)), "eight", 8).dtype == np.uint8


def _saved(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_a_split_mixing_label_maps_and_fields_is_refused(tmp_path):
    root = _occluded_duke(tmp_path)
    train = load_dataset("occluded_duke", root, "train")
    np.save(train[3].mask_path, np.ones((96, 40), np.uint8))
    with pytest.raises(DatasetError, match="0002_c4_f0000004.jpg.confidence_fields.npy is of another kind"):
        load_samples(train, CONFIG)


def test_augmentation_moves_part_confidences_with_the_image():
    image = np.zeros((96, 40, 3), np.uint8)
    parts = np.zeros((8, 12, 5), np.float32)
    parts[LEFT_ARM, :, 0] = 0.9  # the crop's left edge
    keep_all = AugmentConfig(flip_p=1.0, crop_scale=(1.0, 1.0), bipo_p=0.0)
    _, _, _, flipped = augment(image, np.zeros((17, 3), np.float32), np.zeros((0, 17, 3), np.float32), parts,
                               np.random.default_rng(0), keep_all, "eight")
    assert flipped.shape == (8, 96, 40) and flipped[LEFT_ARM].max() == 0
    assert flipped[RIGHT_ARM, :, -1].min() == pytest.approx(0.9) and flipped[RIGHT_ARM, :, 0].max() == 0
    cropped = augment(image, np.zeros((17, 3), np.float32), np.zeros((0, 17, 3), np.float32), parts,
                      np.random.default_rng(1), AugmentConfig(flip_p=0.0, crop_scale=(0.5, 0.5)), "eight")
    assert cropped[3].shape == (8, *cropped[0].shape[:2])
    occluder = (np.full((96, 40, 3), 200, np.uint8), np.zeros((17, 3), np.float32), np.zeros((0, 17, 3), np.float32),
                np.full((8, 12, 5), 0.1, np.float32))
    occluder[3][TORSO, 4:] = 0.8  # its person: the lower two thirds
    target = (image, np.zeros((17, 3), np.float32), np.zeros((0, 17, 3), np.float32), np.full((8, 96, 40), 0.7, np.float32))
    occluded = occlude(target, occluder, 0.6, np.random.default_rng(2))
    pasted = occluded[0][..., 0] == 200
    assert pasted.any() and not pasted[:20].any()
    assert np.all(occluded[3][:, pasted] == 0) and np.all(occluded[3][:, ~pasted] == 0.7)


def test_five_v_masks_train_five_parts(tmp_path):
    config = KPRConfig.tiny(num_classes=4, num_parts=5, part_grouping="five_v", prompt_grouping="cck6")
    root = _occluded_duke(tmp_path)
    loaded = load_samples(load_dataset("occluded_duke", root, "train"), config)
    assert all(s.mask.shape == (5, 12, 5) for s in loaded)
    assert np.allclose(loaded[0].mask[:, 5, 0], [0.9, 0, 0.8, 0.8, 0.7])  # nose; left hip in two parts; right ankle
    keep_all = AugmentConfig(flip_p=1.0, crop_scale=(1.0, 1.0), bipo_p=0.0)
    items = [augment(*s.arrays(), np.random.default_rng(i), keep_all, config.part_grouping)
             for i, s in enumerate(loaded[:4])]
    assert np.allclose(items[0][3][:, 60, -1], [0.9, 0, 0.8, 0.8, 0.7])  # flipped: no left/right part to swap
    images, prompts, targets = make_batch(items, config)
    assert prompts.shape == (4, 8, 64, 32) and targets.shape == (4, 6, 64, 32)
    model = KPR(config)
    loss, losses = KPRLoss(config.loss)(model(images, prompts), torch.tensor([0, 0, 1, 1]), targets)
    assert torch.isfinite(loss) and losses["part_attention"] > 0


def test_a_training_run_on_the_official_layout_trains_the_part_attention(tmp_path):
    from training.train import train
    from training.train_config import TrainConfig

    root = _occluded_duke(tmp_path)
    result = train(TrainConfig(data_root=str(root), dataset="occluded_duke", out=str(tmp_path / "model"),
                               preset="tiny", epochs=2, identities_per_batch=2, instances_per_identity=2))
    assert result["steps"] > 0 and result["last_losses"]["part_attention"] > 0
    config = KPRConfig.tiny(num_classes=4)
    items = [s.arrays() for s in load_samples(load_dataset("occluded_duke", root, "train"), config)]
    _, _, targets = make_batch(items[:4], config)
    assert targets.shape == (4, 9, 64, 32) and targets.dtype == torch.float32
