"""Tests of the kpr_model package: prompts, model, losses, checkpoints, encoder, a tiny training run."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kpr_model import (
    KPR,
    BackboneWeightsNotFoundError,
    CheckpointError,
    KPRConfig,
    KPREncoder,
    KPRLoss,
    KPRModelError,
    LossConfig,
    ReIDEmbeddings,
    empty_prompt,
    group_names,
    keypoints_to_part_labels,
    keypoints_to_prompt,
    load_checkpoint,
    prepare_crops,
    read_model_id,
    save_checkpoint,
)
from kpr_model.config import KPRConfigError
from kpr_model.keypoints import KEYPOINT_INDEX, PART_GROUPINGS, part_grouping_of
from kpr_model.losses import batch_hard_triplet, part_averaged_distances

torch.set_num_threads(2)

# A standing person in a 64x32 crop, (x, y) per COCO keypoint.
SKELETON_64x32 = {
    "nose": (16, 6), "left_eye": (17, 5), "right_eye": (15, 5), "left_ear": (18, 6), "right_ear": (14, 6),
    "left_shoulder": (22, 16), "right_shoulder": (10, 16), "left_elbow": (24, 26), "right_elbow": (8, 26),
    "left_wrist": (24, 34), "right_wrist": (8, 34), "left_hip": (20, 36), "right_hip": (12, 36),
    "left_knee": (20, 48), "right_knee": (12, 48), "left_ankle": (20, 60), "right_ankle": (12, 60),
}


def skeleton(scale_x: float = 1.0, scale_y: float = 1.0, conf: float = 0.9) -> np.ndarray:
    """The reference skeleton as a [17, 3] array, scaled to another crop size."""
    kps = np.zeros((17, 3), np.float32)
    for name, (x, y) in SKELETON_64x32.items():
        kps[KEYPOINT_INDEX[name]] = (x * scale_x, y * scale_y, conf)
    return kps


def channel(config: KPRConfig, group: str) -> int:
    """Prompt channel index of a prompt group (channel 0 is the background)."""
    return 1 + group_names(config.prompt_grouping).index(group)


@pytest.fixture(scope="module")
def tiny() -> KPRConfig:
    return KPRConfig.tiny(num_classes=6)


@pytest.fixture(scope="module")
def tiny_model(tiny: KPRConfig) -> KPR:
    torch.manual_seed(0)
    return KPR(tiny).eval()


# ---------------------------------------------------------------- config


def test_config_round_trip_and_rejects_unknown_keys() -> None:
    config = KPRConfig.demo(num_classes=12, loss=LossConfig(triplet_margin=0.5))
    data = json.loads(json.dumps(config.to_dict()))
    assert KPRConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown KPRConfig keys"):
        KPRConfig.from_dict({**data, "embedim": 3})
    with pytest.raises(ValueError, match="unknown KPRConfig.loss keys"):
        KPRConfig.from_dict({**data, "loss": {"triplet_margn": 0.3}})
    with pytest.raises(ValueError, match="num_parts"):
        KPRConfig(num_parts=5)
    assert KPRConfig().num_prompt_channels == 10
    assert KPRConfig(prompt_grouping="cck6").num_prompt_channels == 8


# ---------------------------------------------------------------- prompts


def test_prompt_channels_for_known_keypoints() -> None:
    config = KPRConfig(image_size=(128, 64))
    kps = np.zeros((17, 3), np.float32)
    kps[KEYPOINT_INDEX["nose"]] = (32, 10, 0.9)
    kps[KEYPOINT_INDEX["left_wrist"]] = (10, 60, 0.8)
    kps[KEYPOINT_INDEX["right_ankle"]] = (40, 120, 0.2)  # below vis_thresh: dropped
    kps[KEYPOINT_INDEX["left_knee"]] = (70, 100, 0.9)  # outside the image: dropped
    negative = np.zeros((1, 17, 3), np.float32)
    negative[0, KEYPOINT_INDEX["nose"]] = (50, 100, 0.9)
    prompt = keypoints_to_prompt([kps, None], [negative, None], (128, 64), config)

    assert prompt.shape == (2, 10, 128, 64)
    head, left_arm = channel(config, "head"), channel(config, "left_arm")
    assert prompt[0, head, 10, 32] == pytest.approx(1.0)
    assert 0.8 < prompt[0, head, 11, 32] < 1.0  # Gaussian decay next to the keypoint
    assert prompt[0, head, 60, 32] == 0.0
    assert prompt[0, left_arm, 60, 10] == pytest.approx(1.0)
    for dropped in ("right_leg", "right_foot", "left_leg", "torso", "right_arm"):
        assert prompt[0, channel(config, dropped)].max() == 0.0, dropped
    assert prompt[0, -1, 100, 50] == pytest.approx(1.0)
    assert prompt[0, -1, :60].max() == 0.0
    assert prompt[0, 0, 10, 32] == 0.0 and prompt[0, 0, 100, 50] == 0.0
    assert prompt[0, 0, 127, 0] == 1.0 and prompt[0, 0, 40, 50] == 1.0
    assert torch.equal(prompt[1], empty_prompt(1, (128, 64), config)[0])
    assert prompt.min() >= 0.0 and prompt.max() <= 1.0


def test_prompt_groups_take_max_and_cck6() -> None:
    config = KPRConfig(image_size=(128, 64), prompt_grouping="cck6")
    kps = skeleton(2.0, 2.0)
    prompt = keypoints_to_prompt(kps[None], None, (128, 64), config)
    assert prompt.shape == (1, 8, 128, 64)
    torso = prompt[0, channel(config, "torso")]
    for name in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"):
        x, y = (int(v) for v in kps[KEYPOINT_INDEX[name], :2])
        assert torso[y, x] == pytest.approx(1.0)
    assert prompt[0, -1].max() == 0.0


def test_part_labels_from_keypoints(tiny: KPRConfig) -> None:
    labels = keypoints_to_part_labels([skeleton(), None], tiny.image_size, tiny)
    assert labels.shape == (2, 64, 32) and labels.dtype == torch.long
    names = group_names("eight")
    assert labels[0, 6, 16] == 1 + names.index("head")
    assert labels[0, 48, 20] == 1 + names.index("left_leg")  # left knee
    assert labels[0, 60, 20] == 1 + names.index("left_foot")  # left ankle is in leg and foot: foot wins
    assert labels[0, 16, 10] == 1 + names.index("torso")  # right shoulder is in right arm and torso
    assert labels[0, 0, 0] == 0 and labels[1].max() == 0


def test_five_v_parts_with_cck6_prompts() -> None:
    config = KPRConfig.tiny(num_classes=3, num_parts=5, part_grouping="five_v", prompt_grouping="cck6")
    assert group_names("five_v") == ("head", "upper_arms_torso", "lower_arms_torso", "legs", "feet")
    assert len({len(PART_GROUPINGS[g]) for g in PART_GROUPINGS}) == len(PART_GROUPINGS)  # K names the grouping
    assert (part_grouping_of(5), part_grouping_of(8), part_grouping_of(3)) == ("five_v", "eight", None)
    with pytest.raises(KPRConfigError, match="num_parts=8 does not match part_grouping 'five_v'"):
        KPRConfig.tiny(part_grouping="five_v")
    labels = keypoints_to_part_labels([skeleton()], config.image_size, config)
    assert labels[0, 6, 16] == 1  # head
    assert labels[0, 26, 24] == 2 and labels[0, 16, 10] == 2  # left elbow, right shoulder
    assert labels[0, 34, 8] == 3  # right wrist
    assert labels[0, 36, 20] == 4  # left hip is in lower arms + torso and legs: the later group wins
    assert labels[0, 60, 12] == 5  # right ankle
    torch.manual_seed(0)
    model = KPR(config).eval()
    images = torch.randn(2, 3, *config.image_size)
    prompts = keypoints_to_prompt([skeleton(), None], None, config.image_size, config)
    with torch.no_grad():
        out = model(images, prompts)
    assert prompts.shape == (2, 8, 64, 32) and out.pixel_logits.shape[1] == 6
    assert out.embeddings["parts"].shape == (2, 5, 32) and out.visibility.shape == (2, 5)


# ---------------------------------------------------------------- model


def test_forward_shapes_with_and_without_prompt(tiny: KPRConfig, tiny_model: KPR) -> None:
    images = torch.randn(3, 3, *tiny.image_size)
    prompts = keypoints_to_prompt([skeleton(), None, skeleton()], None, tiny.image_size, tiny)
    k, d, c = tiny.num_parts, tiny.embed_dim, tiny.num_classes
    with torch.no_grad():
        for out in (tiny_model(images), tiny_model(images, prompts)):
            hf, wf = out.features.shape[-2:]
            assert out.pixel_logits.shape == out.part_maps.shape == (3, k + 1, hf, wf)
            for name in ("global", "foreground", "background"):
                assert out.embeddings[name].shape == out.embeddings[f"bn_{name}"].shape == (3, d)
                assert out.id_logits[name].shape == (3, c)
            assert out.embeddings["parts"].shape == out.embeddings["bn_parts"].shape == (3, k, d)
            assert out.embeddings["concat_parts"].shape == (3, k * d)
            assert out.id_logits["parts"].shape == (3, k, c)
            assert out.visibility.shape == (3, k)
            assert torch.allclose(out.part_maps.sum(dim=1), torch.ones(3, hf, wf), atol=1e-5)


def test_visibility_follows_pixel_argmax(tiny: KPRConfig) -> None:
    torch.manual_seed(1)
    model = KPR(tiny).eval()
    torch.nn.init.normal_(model.pixel_classifier.classifier.weight, std=0.5)
    with torch.no_grad():
        out = model(torch.randn(4, 3, *tiny.image_size))
    winners = out.part_maps.argmax(dim=1)
    for i in range(4):
        for part in range(tiny.num_parts):
            won = winners[i] == part + 1
            expected = out.part_maps[i, part + 1][won].max().item() if won.any() else 0.0
            assert out.visibility[i, part].item() == pytest.approx(expected)
    assert (out.visibility == 0).any() and (out.visibility > 0).any()


@pytest.mark.parametrize("preset", ["tiny", "tiny_swin", "tiny_solider", "tiny_vit"])
def test_encoder_equals_the_training_pass_and_runs_no_training_head(preset: str) -> None:
    config = getattr(KPRConfig, preset)(num_classes=6)
    torch.manual_seed(3)
    model = KPR(config).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    torch.nn.init.normal_(model.pixel_classifier.classifier.weight, std=0.5)
    for weight in model.backbone.masks_patch_embed.parameters():
        torch.nn.init.normal_(weight, std=0.5)
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((64, 32), (90, 40), (128, 64))]
    keypoints = [skeleton(), None, skeleton(2.0, 2.0)]
    negatives = [skeleton(1.2, 1.0)[None], None, None]
    images, prompts = prepare_crops(crops, keypoints, negatives, config)
    with torch.inference_mode():
        full = model(images, prompts)
    called: set[str] = set()
    for name, module in model.named_modules():
        module.register_forward_hook(lambda *_, name=name: called.add(name))
    embedded = KPREncoder(model, config).embed(crops, keypoints, negatives)
    assert np.array_equal(embedded.global_emb, F.normalize(full.embeddings["bn_foreground"], dim=-1).numpy())
    assert np.array_equal(embedded.parts, F.normalize(full.embeddings["parts"], dim=-1).numpy())
    assert np.array_equal(embedded.visibility, full.visibility.numpy())
    assert (full.visibility == 0).any() and (full.visibility > 0).any()
    assert {name.split(".")[0] for name in called} == {
        "backbone", "pixel_classifier", "foreground_after_pooling_dim_reduce", "foreground_identity_classifier",
        "parts_after_pooling_dim_reduce",
    }
    assert "foreground_identity_classifier.classifier" not in called


def test_prompt_has_no_effect_until_tokenizer_learns_then_negative_prompt_matters(tiny: KPRConfig) -> None:
    torch.manual_seed(2)
    model = KPR(tiny).eval()
    images = torch.randn(2, 3, *tiny.image_size)
    negative = skeleton()[None]
    with_neg = keypoints_to_prompt([skeleton(), skeleton()], [negative, None], tiny.image_size, tiny)
    without = keypoints_to_prompt([skeleton(), skeleton()], None, tiny.image_size, tiny)
    with torch.no_grad():
        assert torch.equal(model(images, with_neg).embeddings["foreground"], model(images).embeddings["foreground"])
        torch.nn.init.normal_(model.backbone.masks_patch_embed.weight, std=0.5)
        a = model(images, with_neg).embeddings["bn_foreground"]
        b = model(images, without).embeddings["bn_foreground"]
    assert not torch.allclose(a[0], b[0], atol=1e-4)
    assert torch.allclose(a[1], b[1], atol=1e-6)  # sample 1 has no negative in either prompt


def test_gradients_reach_every_trainable_parameter(tiny: KPRConfig) -> None:
    weights = LossConfig(id_background=1.0, id_parts=1.0)
    config = tiny.with_updates(loss=weights)
    torch.manual_seed(3)
    model = KPR(config).train()
    for module in model.modules():  # timm zero-inits each residual block's last BN, which blocks gradients at init
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    images = torch.randn(8, 3, *config.image_size)
    prompts = keypoints_to_prompt([skeleton()] * 8, None, config.image_size, config)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    labels = keypoints_to_part_labels([skeleton()] * 8, config.image_size, config)
    total, terms = KPRLoss(config.loss)(model(images, prompts), pids, labels)
    total.backward()
    assert {"id_global", "id_foreground", "id_concat_parts", "id_background", "id_parts",
            "triplet_parts", "part_attention", "loss"} <= set(terms)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    bnneck_biases = {n for n, _ in model.named_parameters() if "identity_classifier" in n and n.endswith("bn.bias")}
    assert frozen == bnneck_biases and len(frozen) == 4 + config.num_parts
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_unsupported_backbone_and_missing_weights(tmp_path) -> None:
    with pytest.raises(KPRModelError, match="not supported"):
        KPR(KPRConfig.tiny(backbone="vit_tiny_patch16_224"))
    model = KPR(KPRConfig.tiny())
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(BackboneWeightsNotFoundError, match=str(missing)) as info:
        model.load_backbone_weights(missing)
    assert isinstance(info.value, FileNotFoundError)


def test_load_backbone_weights_from_safetensors_and_torch_file(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(4)
    source = KPR(KPRConfig.tiny()).backbone.features.model.state_dict()
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": source}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        torch.manual_seed(5)
        target = KPR(KPRConfig.tiny())
        target.load_backbone_weights(tmp_path / name)
        loaded = target.backbone.features.model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in source.items())


def test_bottleneck_resnet_with_prompt() -> None:
    config = KPRConfig.tiny(backbone="resnet14t")  # stem 64 channels, stages 256..2048
    model = KPR(config).eval()
    prompts = keypoints_to_prompt([skeleton()], None, config.image_size, config)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *config.image_size), prompts)
    assert out.features.shape == (1, 2048, 8, 4)


def test_last_stride_keeps_stage4_resolution() -> None:
    strided = KPR(KPRConfig.tiny(fusion_stages=(4,), last_stride=2))
    unstrided = KPR(KPRConfig.tiny(fusion_stages=(4,)))
    images = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert strided.eval()(images).features.shape[-2:] == (2, 1)
        assert unstrided.eval()(images).features.shape[-2:] == (4, 2)


# ---------------------------------------------------------------- losses


def test_part_averaged_triplet_with_visibility() -> None:
    parts = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0], [9.0, 9.0]]])
    dist = part_averaged_distances(parts)
    assert dist[0, 1].item() == pytest.approx(3.0)
    visibility = torch.tensor([[True, False], [False, True], [True, False]])
    masked = part_averaged_distances(parts, visibility)
    assert masked[0, 1].item() == -1.0 and masked[0, 2].item() == pytest.approx(0.0)
    loss, valid = batch_hard_triplet(dist, torch.tensor([0, 0, 1]), margin=5.0)
    assert valid == pytest.approx(2 / 3)
    expected = ((3.0 - dist[0, 2] + 5.0).clamp_min(0) + (3.0 - dist[1, 2] + 5.0).clamp_min(0)) / 2
    assert loss.item() == pytest.approx(expected.item()) and loss.item() > 0


def test_loss_skips_absent_masks_and_needs_classifiers(tiny: KPRConfig, tiny_model: KPR) -> None:
    out = tiny_model(torch.randn(4, 3, *tiny.image_size))
    _, terms = KPRLoss(tiny.loss)(out, torch.tensor([0, 0, 1, 1]), None)
    assert "part_attention" not in terms and "triplet_parts" in terms
    no_classes = KPR(KPRConfig.tiny()).eval()
    with pytest.raises(ValueError, match="num_classes"):
        KPRLoss(LossConfig())(no_classes(torch.randn(2, 3, 64, 32)), torch.tensor([0, 1]))


# ---------------------------------------------------------------- encoder and checkpoints


def random_crops(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in ((64, 32), (120, 50), (33, 17))]


def test_encoder_handles_sizes_and_missing_keypoints(tiny: KPRConfig, tiny_model: KPR) -> None:
    encoder = KPREncoder(tiny_model, tiny)
    crops = random_crops(np.random.default_rng(0))
    keypoints = [skeleton(), None, skeleton(17 / 32, 33 / 64)]
    negatives = [None, skeleton(50 / 32, 120 / 64)[None], np.zeros((0, 17, 3), np.float32)]
    emb = encoder.embed(crops, keypoints, negatives, batch_size=2)
    assert isinstance(emb, ReIDEmbeddings) and len(emb) == 3
    assert emb.global_emb.shape == (3, tiny.embed_dim) and emb.parts.shape == (3, tiny.num_parts, tiny.embed_dim)
    assert emb.visibility.shape == (3, tiny.num_parts)
    assert emb.global_emb.dtype == emb.parts.dtype == emb.visibility.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.global_emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.parts, axis=2), 1.0, atol=1e-5)
    one_batch = encoder.embed(crops, keypoints, negatives, batch_size=64)
    np.testing.assert_allclose(one_batch.global_emb, emb.global_emb, atol=1e-5)
    assert len(encoder.embed(crops)) == 3 and len(encoder.embed([])) == 0
    tiny_model.train()
    again = encoder.embed(crops, keypoints, negatives, batch_size=2)
    assert tiny_model.training
    tiny_model.eval()
    np.testing.assert_array_equal(again.global_emb, emb.global_emb)
    with pytest.raises(ValueError, match="uint8"):
        encoder.embed([crops[0].astype(np.float32)])
    with pytest.raises(ValueError, match="one entry per crop"):
        encoder.embed(crops, keypoints[:2])


def test_prepare_crops_rescales_keypoints(tiny: KPRConfig) -> None:
    crop = np.zeros((128, 64, 3), np.uint8)
    _, big = prepare_crops([crop], [skeleton(2.0, 2.0)], None, tiny)
    direct = keypoints_to_prompt(skeleton()[None], None, tiny.image_size, tiny)
    assert torch.allclose(big, direct)


def test_prepare_crops_resizes_as_the_official_test_transform(tiny: KPRConfig) -> None:
    """Bilinear on uint8 without antialiasing: a 4x smaller image samples pixels 4i + 1 and 4i + 2 of every four."""
    columns = np.tile(np.array([200, 40, 80, 0], np.uint8), 32)
    crop = np.repeat(np.repeat(columns[None, :, None], 4 * 64, axis=0), 3, axis=2)
    images, _ = prepare_crops([crop], None, None, tiny)
    mean, std = np.array(tiny.norm_mean), np.array(tiny.norm_std)
    expected = (60 / 255 - mean) / std  # (40 + 80) / 2; an antialiased resize would mix in 200 and 0
    np.testing.assert_allclose(images[0].numpy(), np.broadcast_to(expected[:, None, None], (3, 64, 32)), atol=1e-6)
    odd = np.random.default_rng(2).integers(0, 256, (97, 41, 3), dtype=np.uint8)
    opencv = cv2.resize(odd, (32, 64), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(prepare_crops([odd], None, None, tiny)[0][0].numpy(),
                               (opencv - mean[:, None, None]) / std[:, None, None], atol=1e-6)


def test_a_keypoint_on_the_crop_border_is_outside_it(tiny: KPRConfig) -> None:
    """x == crop width or y == crop height is dropped, judged in the crop's pixels: in a 97x41 crop, float32 scaling
    once turned x = 41 into 31.99999 on the 32-wide input and kept it. Anything inside stays inside."""
    crop = np.zeros((97, 41, 3), np.uint8)

    def head(x: float, y: float) -> torch.Tensor:
        kps = np.zeros((17, 3), np.float64)
        kps[KEYPOINT_INDEX["nose"]] = (x, y, 0.9)
        return prepare_crops([crop], [kps], [kps[None]], tiny)[1][0]

    for x, y in ((41.0, 50.0), (20.0, 97.0), (-0.01, 50.0), (20.0, float("nan"))):
        prompt = head(x, y)
        assert prompt[channel(tiny, "head")].max() == 0 and prompt[-1].max() == 0
    for x, y in ((40.99, 96.99), (np.nextafter(41.0, 0.0), np.nextafter(97.0, 0.0))):
        prompt = head(x, y)
        assert prompt[channel(tiny, "head"), 63, 31] == 1.0 and prompt[-1, 63, 31] == 1.0


def test_a_scaled_keypoint_lands_on_the_pixel_the_official_loader_truncates_it_to(tiny: KPRConfig) -> None:
    """y = 49 in a 98-high crop is 31.999999999999996 on the 64-high input: pixel 31 officially (float64, then int);
    a float32 cast first would round it to 32."""
    kps = np.zeros((17, 3), np.float64)
    kps[KEYPOINT_INDEX["nose"]] = (20.0, 49.0, 0.9)
    prompt = prepare_crops([np.zeros((98, 41, 3), np.uint8)], [kps], None, tiny)[1][0]
    head = prompt[channel(tiny, "head")]
    assert head[31, 15] == 1.0 and head.max() == 1.0 and head[32, 15] < 1.0


def test_checkpoint_round_trip(tmp_path, tiny: KPRConfig, tiny_model: KPR) -> None:
    model_id = save_checkpoint(tiny_model, tiny, tmp_path / "a", metadata={"epoch": 3})
    assert save_checkpoint(tiny_model, tiny, tmp_path / "b") == model_id == read_model_id(tmp_path / "a")
    loaded, config, loaded_id = load_checkpoint(tmp_path / "a")
    assert config == tiny and loaded_id == model_id
    crops = random_crops(np.random.default_rng(1))
    before = KPREncoder(tiny_model, tiny).embed(crops, [skeleton(), None, None])
    encoder = KPREncoder.from_checkpoint(tmp_path / "b")
    after = encoder.embed(crops, [skeleton(), None, None])
    assert encoder.model_id == model_id
    assert np.array_equal(before.global_emb, after.global_emb) and np.array_equal(before.parts, after.parts)
    assert np.array_equal(before.visibility, after.visibility)
    with torch.no_grad():
        loaded.pixel_classifier.classifier.bias.add_(1.0)
    assert save_checkpoint(loaded, config, tmp_path / "c") != model_id


def test_missing_or_incomplete_checkpoint(tmp_path, tiny: KPRConfig, tiny_model: KPR) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent")
    save_checkpoint(tiny_model, tiny, tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        KPREncoder.from_checkpoint(tmp_path / "ck")
    save_checkpoint(tiny_model, tiny, tmp_path / "bad")
    data = (tmp_path / "bad" / "model.safetensors").read_bytes()
    (tmp_path / "bad" / "model.safetensors").write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
    with pytest.raises(CheckpointError, match="do not match model_id"):
        load_checkpoint(tmp_path / "bad")


# ---------------------------------------------------------------- training


def synthetic_batch(
    rng: np.random.Generator, colours: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], torch.Tensor]:
    """Two noisy views of each identity: a person-shaped box with identity-specific top/bottom colours."""
    crops, kps, pids = [], [], []
    for pid, (top, bottom) in enumerate(colours):
        for _ in range(2):
            image = rng.integers(0, 60, size=(64, 32, 3)).astype(np.int16)
            dx = int(rng.integers(-3, 4))
            image[14:38, 9 + dx:23 + dx] = top
            image[38:62, 10 + dx:22 + dx] = bottom
            image += rng.integers(-25, 26, size=image.shape)
            crops.append(np.clip(image, 0, 255).astype(np.uint8))
            kp = skeleton()
            kp[:, 0] += dx
            kps.append(kp)
            pids.append(pid)
    return crops, kps, torch.tensor(pids)


def test_tiny_training_lowers_the_loss(tiny: KPRConfig) -> None:
    torch.manual_seed(6)
    rng = np.random.default_rng(6)
    colours = rng.integers(60, 256, size=(tiny.num_classes, 2, 3))
    model = KPR(tiny).train()
    criterion = KPRLoss(tiny.loss)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(30):
        crops, kps, pids = synthetic_batch(rng, colours)
        images, prompts = prepare_crops(crops, kps, None, tiny)
        labels = keypoints_to_part_labels(kps, tiny.image_size, tiny)
        loss, _ = criterion(model(images, prompts), pids, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
