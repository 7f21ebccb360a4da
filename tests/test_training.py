"""Training pieces: PK batches, joint augmentation, and a short real training run on synthetic crops."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kpr_model.keypoints import KEYPOINT_INDEX
from training.augment import AugmentConfig, augment
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
    _, kps, _, flipped = augment(image, keypoints, np.zeros((0, 17, 3), np.float32), mask, np.random.default_rng(0), cfg)
    right_elbow = kps[KEYPOINT_INDEX["right_elbow"]]
    assert right_elbow[2] == 1 and right_elbow[0] == 20 - 1 - 3
    assert flipped[15, 16] == 3 and (flipped == 2).sum() == 0


@pytest.mark.integration
def test_short_training_run_beats_chance_on_held_out_identities(tmp_path):
    from kpr_model.checkpoint import load_checkpoint
    from training.synthetic import WorldConfig, export_reid_crops
    from training.train import TrainConfig, train

    world = dataclasses.replace(WorldConfig.small(seed=11), n_identities=16, duration_s=24.0)
    export = export_reid_crops(tmp_path / "crops", world, train_fraction=0.6)
    result = train(TrainConfig(data_root=str(tmp_path / "crops"), out=str(tmp_path / "ckpt"), preset="tiny", epochs=150))
    chance = 1.0 / len(export.test_identities)
    assert result["heldout"]["rank1"] > chance and result["heldout"]["map"] >= 2 * chance
    _, _, model_id = load_checkpoint(tmp_path / "ckpt")
    assert model_id == result["model_id"]
