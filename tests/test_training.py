"""Training pieces: PK batches, joint augmentation, and a short real training run on synthetic crops."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kpr_model.keypoints import KEYPOINT_INDEX
from training.augment import AugmentConfig, augment, bipo
from training.pk_sampler import PKSampler


def test_pk_batches_have_p_identities_k_instances_and_shard_by_rank():
    labels = [i // 3 for i in range(30)]
    sampler = PKSampler(labels, p=4, k=4, seed=0)
    batches = list(sampler.epoch(0))
    assert len(batches) == len(sampler) == 2
    for batch in batches:
        ids = [labels[i] for i in batch]
        assert len(batch) == 16 and len(set(ids)) == 4 and all(ids.count(x) == 4 for x in set(ids))
    ranks = [list(PKSampler(labels, 2, 2, seed=0, rank=r, world_size=2).epoch(1)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    flat = [tuple(b) for r in ranks for b in r]
    assert len(set(flat)) == 4
    assert list(sampler.epoch(0)) == batches and list(sampler.epoch(1)) != batches


def test_flip_moves_keypoints_and_part_labels_together():
    image = np.zeros((40, 20, 3), np.uint8)
    mask = np.zeros((40, 20), np.uint8)
    mask[10:20, 2:5] = 2  # left arm, at the image's left
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[KEYPOINT_INDEX["left_elbow"]] = (3, 15, 1)
    cfg = AugmentConfig(flip_p=1.0, crop_scale=(1.0, 1.0), drop_all_keypoints_p=0.0, drop_random_keypoints_p=0.0)
    _, kps, _, flipped = augment(image, keypoints, np.zeros((0, 17, 3), np.float32), mask, np.random.default_rng(0),
                                 cfg, "eight")
    right_elbow = kps[KEYPOINT_INDEX["right_elbow"]]
    assert right_elbow[2] == 1 and right_elbow[0] == 20 - 1 - 3
    assert flipped[15, 16] == 3 and (flipped == 2).sum() == 0


def _person(height: int, width: int, colour: tuple[int, int, int], label: int):
    """A crop with a box-shaped person of ``colour`` (part ``label``) on a dark background, and its keypoints.

    The person covers rows [h/8, 7h/8) and columns [w/4, 3w/4); 16 keypoints lie on it, the last one on the
    background. Box edges are even so that halving the crop keeps every pixel a pure colour.
    """
    image = np.full((height, width, 3), 20, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    rows, cols = slice(height // 8, 7 * height // 8), slice(width // 4, 3 * width // 4)
    image[rows, cols], mask[rows, cols] = colour, label
    keypoints = np.zeros((17, 3), np.float32)
    for j in range(16):
        keypoints[j] = (width // 4 + 2 + (j % 4) * (width // 10), height // 8 + 2 + j * (height // 22), 0.9)
    keypoints[16] = (1, 1, 0.9)
    return image, keypoints, np.zeros((0, 17, 3), np.float32), mask


BIPO_ONLY = AugmentConfig(bipo_p=1.0)


def test_bipo_pastes_the_occluder_as_background_and_its_keypoints_as_a_negative_skeleton():
    target, occluder = _person(64, 32, (0, 200, 0), 4), _person(128, 64, (250, 0, 0), 4)
    occluded, _ = bipo([target, occluder], [target, occluder], [0, 1], np.random.default_rng(3), BIPO_ONLY)
    image, keypoints, negatives, mask = occluded
    pasted = np.any(image != target[0], axis=-1)
    assert pasted.sum() > 100
    assert np.all(image[pasted] == (250, 0, 0)) and np.all(mask[pasted] == 0)
    assert np.array_equal(mask[~pasted], target[3][~pasted])
    assert negatives.shape == (1, 17, 3)
    on_occluder = negatives[0, negatives[0, :, 2] > 0]
    assert len(on_occluder) >= 4 and negatives[0, 16, 2] == 0  # its background keypoint is not a prompt
    x, y = np.round(on_occluder[:, 0]).astype(int), np.round(on_occluder[:, 1]).astype(int)
    assert np.all(pasted[y, x])
    hidden = pasted[np.round(target[1][:, 1]).astype(int), np.round(target[1][:, 0]).astype(int)]
    assert hidden.any() and not hidden.all()
    assert np.all(keypoints[hidden, 2] == 0) and np.all(keypoints[~hidden, 2] == 0.9)


def test_bipo_box_overlap_stays_within_bounds_and_comes_from_below():
    target = (np.zeros((128, 64, 3), np.uint8), np.zeros((17, 3), np.float32), np.zeros((0, 17, 3), np.float32),
              np.ones((128, 64), np.uint8))
    solid = (np.full((96, 48, 3), 255, np.uint8), np.zeros((17, 3), np.float32), np.zeros((0, 17, 3), np.float32),
             np.ones((96, 48), np.uint8))
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(bipo_p=1.0, bipo_overlap=(0.5, 0.8))
    covered = []
    for _ in range(60):
        image = bipo([target, solid], [target, solid], [0, 1], rng, cfg)[0][0]
        box = image[..., 0] == 255
        assert box[-1, 0] or box[-1, -1]  # the occluder stands in front: its box reaches the bottom edge
        covered.append(box.mean())
    tolerance = 0.5 / 128 + 0.5 / 64  # whole-pixel shifts
    assert 0.5 - tolerance <= min(covered) < 0.56 and 0.74 < max(covered) <= 0.8 + tolerance


def test_bipo_changes_nothing_at_probability_zero_or_without_another_identity():
    target, occluder = _person(64, 32, (0, 200, 0), 4), _person(64, 32, (250, 0, 0), 4)
    items = [target, occluder]
    rng = np.random.default_rng(5)
    assert all(a is b for a, b in zip(bipo(items, items, [0, 1], rng, AugmentConfig(bipo_p=0.0)), items))
    assert rng.random() == np.random.default_rng(5).random()  # no random draw either: seeded runs are unchanged
    same_identity = bipo(items, items, [7, 7], rng, BIPO_ONLY)
    no_mask = [(*occluder[:3], None), target]
    assert all(a is b for a, b in zip(same_identity, items))
    assert bipo(no_mask, no_mask, [0, 1], rng, BIPO_ONLY)[1] is target  # an occluder needs a mask for its shape


def test_augment_config_refuses_unusable_settings():
    with pytest.raises(TypeError, match="bipo_p"):
        AugmentConfig(bipo_p=1.5)
    with pytest.raises(TypeError, match="bipo_overlap"):
        AugmentConfig(bipo_overlap=(0.8, 0.5))
    assert AugmentConfig(crop_scale=[0.9, 1]).crop_scale == (0.9, 1.0)


@pytest.mark.integration
def test_short_training_run_beats_chance_on_held_out_identities(tmp_path):
    from kpr_model.checkpoint import load_checkpoint
    from training.synthetic import WorldConfig, export_reid_crops
    from training.train import train
    from training.train_config import TrainConfig

    world = dataclasses.replace(WorldConfig.small(seed=11), n_identities=16, duration_s=24.0)
    export = export_reid_crops(tmp_path / "crops", world, train_fraction=0.6)
    result = train(TrainConfig(data_root=str(tmp_path / "crops"), out=str(tmp_path / "ckpt"), preset="tiny", epochs=150))
    chance = 1.0 / len(export.test_identities)
    assert result["heldout"]["rank1"] > chance and result["heldout"]["map"] >= 2 * chance
    _, _, model_id = load_checkpoint(tmp_path / "ckpt")
    assert model_id == result["model_id"]
