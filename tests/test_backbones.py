"""Transformer backbones of KPR: timm Swin, timm ViT, SOLIDER Swin (mmcv layout), prompt tokenizer, weights."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kpr_model import KPR, BackboneWeightsNotFoundError, KPRConfig, KPRModelError, empty_prompt
from kpr_model.solider_swin import (
    PatchMerging,
    ShiftWindowMSA,
    SoliderSwinTransformer,
    convert_original_swin,
    relative_position_index,
    shifted_window_mask,
)

torch.set_num_threads(2)

TINY = {"swin": KPRConfig.tiny_swin, "solider": KPRConfig.tiny_solider, "vit": KPRConfig.tiny_vit}
# features [C, Hf, Wf] at 64x32: Swin stage 1 is 1/4 (16x8) with the last stage's depth; ViT is 1/16.
FEATURES = {"swin": (128, 16, 8), "solider": (128, 16, 8), "vit": (32, 4, 2)}


def _prompt(config: KPRConfig, n: int) -> torch.Tensor:
    prompt = empty_prompt(n, config.image_size, config)
    prompt[:, 0, 8:40] = 0.0
    prompt[:, 1, 4:12, 8:24] = 1.0  # head
    prompt[:, 4, 12:40, 4:28] = 1.0  # torso
    prompt[:, -1, 40:60] = 1.0  # negative
    return prompt


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request) -> tuple[str, KPRConfig, KPR]:
    config = TINY[request.param](num_classes=5)
    torch.manual_seed(0)
    return request.param, config, KPR(config).eval()


def test_forward_shapes_with_and_without_prompt(tiny) -> None:
    family, config, model = tiny
    images = torch.randn(2, 3, *config.image_size)
    k, d = config.num_parts, config.embed_dim
    with torch.no_grad():
        for out in (model(images), model(images, _prompt(config, 2))):
            assert out.features.shape == (2, *FEATURES[family])
            assert out.pixel_logits.shape == (2, k + 1, *FEATURES[family][1:])
            assert out.embeddings["parts"].shape == out.embeddings["bn_parts"].shape == (2, k, d)
            assert out.embeddings["concat_parts"].shape == (2, k * d)
            assert out.embeddings["bn_foreground"].shape == (2, d)
            assert out.id_logits["parts"].shape == (2, k, 5)
            assert torch.isfinite(out.features).all()


def test_prompt_tokenizer_zero_at_init_then_effective(tiny) -> None:
    family, config, model = tiny
    tokenizer = model.backbone.masks_patch_embed
    assert isinstance(tokenizer.projection, nn.Conv2d)
    stride = model.backbone.features.stem_stride
    assert tokenizer.projection.kernel_size == tokenizer.projection.stride == (stride, stride)
    assert tokenizer.projection.in_channels == config.num_prompt_channels == 10
    assert tokenizer.projection.out_channels == model.backbone.features.stem_channels
    assert (tokenizer.norm is not None) == (family != "vit")  # same norm as the image patch embedding
    assert not tokenizer.projection.weight.any() and not tokenizer.projection.bias.any()

    images, prompt = torch.randn(2, 3, *config.image_size), _prompt(config, 2)
    with torch.no_grad():
        plain, prompted = model(images), model(images, prompt)
        assert torch.allclose(plain.embeddings["bn_foreground"], prompted.embeddings["bn_foreground"])
        assert torch.allclose(plain.features, prompted.features)
        changed = KPR(config).eval()
        changed.load_state_dict(model.state_dict())
        nn.init.normal_(changed.backbone.masks_patch_embed.projection.weight, std=0.5)
        again = changed(images, prompt)
        no_prompt = changed(images)
    assert not torch.allclose(again.embeddings["bn_foreground"], prompted.embeddings["bn_foreground"], atol=1e-4)
    # no prompt = empty prompt (background channel 1), which now also moves the tokens; this pass tracks gradients,
    # so its fused attention kernel may differ from the no-grad one in the last bits
    empty = changed(images, empty_prompt(2, config.image_size, config)).features
    assert torch.allclose(no_prompt.features, empty, atol=1e-5)


def test_gradients_reach_prompt_tokenizer(tiny) -> None:
    _, config, model = tiny
    trained = KPR(config).train()
    trained.load_state_dict(model.state_dict())
    out = trained(torch.randn(4, 3, *config.image_size), _prompt(config, 4))
    (out.embeddings["parts"].square().mean() + out.embeddings["foreground"].mean()).backward()
    grad = trained.backbone.masks_patch_embed.projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_prompt_resized_like_official() -> None:
    config = KPRConfig.tiny_solider()
    model = KPR(config).eval()
    nn.init.normal_(model.backbone.masks_patch_embed.projection.weight, std=0.5)
    images, prompt = torch.randn(1, 3, 64, 32), _prompt(config, 1)
    small = prompt[:, :, ::2, ::2].contiguous()
    resized = nn.functional.interpolate(small, size=(64, 32), mode="bilinear", align_corners=True)
    with torch.no_grad():
        assert torch.allclose(model(images, small).features, model(images, resized).features, atol=1e-5)


def test_solider_names_and_patch_merging_order() -> None:
    model = SoliderSwinTransformer(embed_dim=8, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4))
    names = set(model.state_dict())
    for name in (
        "patch_embed.projection.weight", "patch_embed.norm.bias",
        "stages.1.blocks.1.attn.w_msa.relative_position_bias_table", "stages.1.blocks.1.attn.w_msa.relative_position_index",
        "stages.1.blocks.1.attn.w_msa.qkv.weight", "stages.1.blocks.1.attn.w_msa.proj.bias",
        "stages.1.blocks.1.ffn.layers.0.0.weight", "stages.1.blocks.1.ffn.layers.1.weight", "stages.1.blocks.1.norm2.weight",
        "stages.2.downsample.reduction.weight", "stages.2.downsample.norm.weight", "norm0.weight", "norm3.bias",
    ):
        assert name in names, name
    assert not any(n.startswith("stages.3.downsample") for n in names)
    assert not any("semantic" in n for n in names)

    # merge order = nn.Unfold(2, stride 2): channel c * 4 + dy * 2 + dx
    merge = PatchMerging(3)
    x = torch.randn(2, 4, 6, 3)
    unfolded = nn.Unfold(2, stride=2)(x.permute(0, 3, 1, 2)).transpose(1, 2).reshape(2, 2, 3, 12)
    with torch.no_grad():
        merge.norm = nn.Identity()
        merge.reduction = nn.Linear(12, 12, bias=False)
        nn.init.eye_(merge.reduction.weight)
        assert torch.equal(merge(x), unfolded)

    # relative position index = mmcv's double-step formula
    w = 7
    seq = (torch.arange(0, (2 * w - 1) * w, 2 * w - 1)[:, None] + torch.arange(w)[None, :]).reshape(1, -1)
    assert torch.equal(relative_position_index(w), (seq + seq.T).flip(1))

    # original-Swin patch merging weights become Unfold-order weights computing the same function
    weight = torch.randn(5, 12)
    blocks = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
    original = torch.cat(blocks, dim=-1).reshape(2, 6, 12) @ weight.T
    converted = convert_original_swin({"layers.0.downsample.reduction.weight": weight})
    assert torch.allclose(unfolded.reshape(2, 6, 12) @ converted["stages.0.downsample.reduction.weight"].T, original, atol=1e-5)


@pytest.mark.parametrize("shift", [0, 3])
def test_window_attention_equals_attention_on_the_zero_padded_map(shift: int) -> None:
    """mmcv pads the map with zero tokens and projects them too; projecting the real tokens only must not change
    the result. Reference: the padded map's windows attended with an explicit softmax."""
    torch.manual_seed(0)
    window, heads, dim = 7, 2, 8
    attn = ShiftWindowMSA(dim, heads, window, shift, 0.0, 0.0).eval()
    msa = attn.w_msa
    with torch.no_grad():
        msa.qkv.bias.normal_()
    x = torch.randn(2, 10, 5, dim)  # padded to 14 x 7
    padded = torch.roll(nn.functional.pad(x, (0, 0, 0, 2, 0, 4)), (-shift, -shift), dims=(1, 2))
    windows = padded.view(2, 2, window, 1, window, dim).permute(0, 1, 3, 2, 4, 5).reshape(4, window * window, dim)
    q, k, v = msa.qkv(windows).view(4, window * window, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) * msa.scale + msa.relative_position_bias_table[relative_position_index(window)].permute(2, 0, 1)
    if shift:
        logits = logits + shifted_window_mask(14, 7, window, shift, x.device).repeat(2, 1, 1)[:, None]
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(4, window * window, dim)
    out = msa.proj(out).view(2, 2, 1, window, window, dim).permute(0, 1, 3, 2, 4, 5).reshape(2, 14, 7, dim)
    expected = torch.roll(out, (shift, shift), dims=(1, 2))[:, :10, :5]
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=0)


def test_solider_semantic_weight_layers() -> None:
    config = KPRConfig.tiny_solider(backbone_args={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                                   "semantic_weight": 0.2})
    model = KPR(config).eval()
    names = set(model.state_dict())
    assert "backbone.features.model.semantic_embed_w.3.weight" in names
    assert model.backbone.features.model.semantic_embed_w[3].weight.shape == (128, 2)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 32)).features.shape == (1, 128, 16, 8)


@pytest.mark.parametrize("family", sorted(TINY))
def test_load_backbone_weights_from_local_file(family, tmp_path) -> None:
    config = TINY[family]()
    torch.manual_seed(1)
    source = KPR(config).backbone.features.model.state_dict()
    if family == "solider":  # SOLIDER files name their tensors backbone.*
        source = {f"backbone.{k}": v for k, v in source.items()}
    path = tmp_path / "weights.pth"
    torch.save(source, path)
    torch.manual_seed(2)
    target = KPR(config)
    target.load_backbone_weights(path)
    loaded = target.backbone.features.model.state_dict()
    for key, value in source.items():
        assert torch.equal(loaded[key.removeprefix("backbone.")], value), key
    with pytest.raises(BackboneWeightsNotFoundError, match="not found"):
        target.load_backbone_weights(tmp_path / "missing.pth")
    torch.save({k: v for k, v in list(source.items())[3:]}, tmp_path / "partial.pth")
    with pytest.raises(KPRModelError, match="missing"):
        target.load_backbone_weights(tmp_path / "partial.pth")


def test_solider_loads_original_swin_names(tmp_path) -> None:
    config = KPRConfig.tiny_solider()
    reference = KPR(config).backbone.features.model
    original = {}
    for key, value in reference.state_dict().items():  # write the mmcv tensors under original Swin names
        if key.startswith("norm"):
            original[key] = value
            continue
        new = key.replace("stages.", "layers.").replace("attn.w_msa.", "attn.").replace("patch_embed.projection", "patch_embed.proj")
        new = new.replace("ffn.layers.0.0.", "mlp.fc1.").replace("ffn.layers.1.", "mlp.fc2.")
        if ".downsample." in key:  # Unfold order c*4 + p -> original block order [p0, p2, p1, p3] of C
            c = value.shape[-1] // 4
            value = value.reshape(*value.shape[:-1], c, 4)[..., [0, 2, 1, 3]].transpose(-1, -2).reshape(value.shape)
        original[new] = value
    torch.save(original, tmp_path / "swin.pth")
    target = KPR(config)
    target.load_backbone_weights(tmp_path / "swin.pth")
    for key, value in reference.state_dict().items():
        assert torch.equal(target.backbone.features.model.state_dict()[key], value), key


def test_pickled_objects_refused(tmp_path) -> None:
    path = tmp_path / "with_config.pth"
    torch.save({"state_dict": {}, "config": _Opaque()}, path)
    with pytest.raises(KPRModelError, match="unpickling"):
        KPR(KPRConfig.tiny_vit()).load_backbone_weights(path)


class _Opaque:
    pass


def test_vit_has_one_stage_and_presets() -> None:
    with pytest.raises(KPRModelError, match="fusion_stages"):
        KPR(KPRConfig.tiny_vit(fusion_stages=(1, 2)))
    official = KPRConfig.solider_swin_base()
    assert official.image_size == (384, 128) and official.norm_mean == official.norm_std == (0.5, 0.5, 0.5)
    assert (official.num_prompt_channels, official.num_parts, official.embed_dim, official.num_classes) == (10, 8, 512, 702)
    assert official.fusion_stages == (1, 2, 3, 4) and official.backbone == "solider_swin_base"
    for preset in (official, KPRConfig.timm_swin_base(), KPRConfig.vit_base(), *(f() for f in TINY.values())):
        assert KPRConfig.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset
    assert "backbone_args" not in KPRConfig.tiny().to_dict()  # older checkpoints keep their config / model id
    with pytest.raises(KPRModelError, match="cannot build"):
        KPR(KPRConfig.tiny_swin(backbone_args={"no_such_arg": 1}))
