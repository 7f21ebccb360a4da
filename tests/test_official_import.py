"""Import of official KPR checkpoints: exact official names/shapes (spec TSV), strictness, prompt channel order."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kpr_model import KPR, KPRConfig, empty_prompt
from kpr_model.official_import import (
    OfficialImportError,
    import_official_checkpoint,
    import_official_state_dict,
    infer_config,
    official_prompt_order,
)

torch.set_num_threads(2)
TSV = Path(__file__).resolve().parents[1].parent / "shared" / "design" / "kpr_official_state_dict.tsv"
B = "backbone_appearance_feature_extractor."


def official_like_state(rows: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random tensors with the given names/shapes; the duplicated patch_embed aliases the model's, as in the file."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in rows:
        if name.endswith("num_batches_tracked"):
            state[name] = torch.randint(0, 10_000, shape, generator=gen)
        elif name.endswith("relative_position_index"):
            state[name] = torch.randint(0, 169, shape, generator=gen)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.05
    for name in state:
        if name.startswith(B + "patch_embed."):
            state[name] = state[name.replace(B, B + "model.")].clone()
    return state


def ours_for(name: str) -> str | None:
    """Our tensor name for an official one (None: in the documented ignore list)."""
    if name == B + "parts_embed" or name.startswith(B + "patch_embed."):
        return None
    if name.startswith(B + "model."):
        return "backbone.features.model." + name[len(B + "model."):]
    if name.startswith(B + "masks_patch_embed."):
        return "backbone.masks_patch_embed." + name[len(B + "masks_patch_embed."):]
    if name.startswith("msf.dim_reduce.layers."):
        return "backbone.msf.dim_reduce." + name[len("msf.dim_reduce.layers."):]
    return name


@pytest.fixture(scope="module")
def tsv_rows() -> list[tuple[str, tuple[int, ...]]]:
    if not TSV.is_file():
        pytest.skip(f"official state-dict listing not found at {TSV}")
    rows = []
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        rows.append((name, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    return rows


def test_full_official_state_dict_imports_exactly(tsv_rows) -> None:
    assert len(tsv_rows) == 480
    state = official_like_state(tsv_rows)
    assert sum(v.numel() for v in state.values()) == 97_791_211
    config = infer_config(state)
    assert config == KPRConfig.solider_swin_base(backbone_args=config.backbone_args)
    assert config.backbone_args == {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32],
                                    "semantic_weight": -1.0}
    model = import_official_state_dict(state)  # config inferred
    ours = model.state_dict()

    covered = set()
    for name, value in state.items():
        target = ours_for(name)
        if target is None:
            continue
        covered.add(target)
        if name == B + "masks_patch_embed.projection.weight":
            value = value[:, official_prompt_order(10)]
        assert torch.equal(ours[target], value), name
    assert covered == set(ours)  # every parameter and buffer of ours came from the file
    assert len(state) - len(covered) == 5  # parts_embed + the 4 aliased patch_embed tensors

    # prompt order: ours [bg, 8 groups, negative] <- official [bg, negative, 8 groups]
    official_w = state[B + "masks_patch_embed.projection.weight"]
    our_w = model.backbone.masks_patch_embed.projection.weight
    assert torch.equal(our_w[:, 0], official_w[:, 0]) and torch.equal(our_w[:, 9], official_w[:, 1])
    assert torch.equal(our_w[:, 1:9], official_w[:, 2:10])

    images = torch.randn(1, 3, 384, 128, generator=torch.Generator().manual_seed(3))
    prompt = empty_prompt(1, (384, 128), config)
    prompt[0, 1, 10:40, 40:90], prompt[0, 0, 10:40, 40:90] = 1.0, 0.0
    with torch.no_grad():
        first = model(images, prompt)
        second = model(images, prompt)
    assert first.features.shape == (1, 1024, 96, 32)
    assert first.embeddings["parts"].shape == (1, 8, 512) and first.id_logits["global"].shape == (1, 702)
    for key in ("bn_foreground", "parts", "global"):
        assert torch.equal(first.embeddings[key], second.embeddings[key]), key
        assert torch.isfinite(first.embeddings[key]).all()


@pytest.fixture(scope="module")
def tiny_official() -> tuple[KPRConfig, dict[str, torch.Tensor], KPR]:
    """A tiny SOLIDER KPR written out under official names (inverse of the import mapping)."""
    config = KPRConfig.tiny_solider(num_classes=4)
    torch.manual_seed(0)
    model = KPR(config).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.backbone.masks_patch_embed.projection.weight, std=0.3)
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0, 0.1)
    state = {}
    inverse = {0: 0, **{2 + g: 1 + g for g in range(8)}, 1: 9}  # official channel -> our channel
    for key, value in model.state_dict().items():
        if key.startswith("backbone.features.model."):
            name = B + "model." + key[len("backbone.features.model."):]
        elif key.startswith("backbone.masks_patch_embed."):
            name = B + "masks_patch_embed." + key[len("backbone.masks_patch_embed."):]
            if name.endswith("projection.weight"):
                value = value[:, [inverse[i] for i in range(10)]]
        elif key.startswith("backbone.msf.dim_reduce."):
            name = "msf.dim_reduce.layers." + key[len("backbone.msf.dim_reduce."):]
        else:
            name = key
        state[name] = value.clone()
    for key in [k for k in state if k.startswith(B + "model.patch_embed.")]:
        state[key.replace(B + "model.", B)] = state[key].clone()
    state[B + "parts_embed"] = torch.zeros(10, 1, 16)
    return config, state, model


def test_tiny_round_trip_gives_identical_outputs(tiny_official) -> None:
    config, state, model = tiny_official
    imported = import_official_state_dict(state, config)
    images = torch.randn(2, 3, *config.image_size)
    prompt = empty_prompt(2, config.image_size, config)
    prompt[:, -1, 30:50], prompt[:, 2, 5:20] = 1.0, 1.0
    with torch.no_grad():
        for p in (None, prompt):
            a, b = model(images, p), imported(images, p)
            assert torch.allclose(a.embeddings["bn_foreground"], b.embeddings["bn_foreground"], atol=1e-6)
            assert torch.allclose(a.embeddings["parts"], b.embeddings["parts"], atol=1e-6)
    # without classifiers (num_classes=0) the id classifier weights are the only ones dropped
    headless = import_official_state_dict(state, config.with_updates(num_classes=0))
    with torch.no_grad():
        assert torch.allclose(headless(images, prompt).embeddings["parts"], model(images, prompt).embeddings["parts"], atol=1e-6)


def test_import_is_strict(tiny_official) -> None:
    config, state, _ = tiny_official
    with pytest.raises(OfficialImportError, match="missing"):
        import_official_state_dict({k: v for k, v in state.items() if not k.startswith("pixel_classifier.bn")}, config)
    with pytest.raises(OfficialImportError, match="unexpected"):
        import_official_state_dict({**state, "foreground_attention_pooling_head.weight": torch.ones(1)}, config)
    with pytest.raises(OfficialImportError, match="no counterpart"):
        import_official_state_dict({**state, B + "sie_embed": torch.ones(3, 1, 16)}, config)
    tampered = dict(state)
    tampered[B + "patch_embed.norm.weight"] = tampered[B + "patch_embed.norm.weight"] + 1
    with pytest.raises(OfficialImportError, match="alias"):
        import_official_state_dict(tampered, config)
    with pytest.raises(OfficialImportError, match="prompt tokenizer"):
        import_official_state_dict(state, config.with_updates(prompt_grouping="cck6"))
    with pytest.raises(OfficialImportError, match="SOLIDER"):
        import_official_state_dict(state, KPRConfig.tiny())
    with pytest.raises(OfficialImportError, match="do not fit"):
        import_official_state_dict(state, config.with_updates(num_classes=7))


class _TrainingConfig:
    """Stands for the yacs config object that official .pth files may pickle beside the weights."""


def test_checkpoint_files(tiny_official, tmp_path) -> None:
    config, state, model = tiny_official
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 120}, tmp_path / "kpr.pth")
    imported = import_official_checkpoint(tmp_path / "kpr.pth", config)
    assert all(torch.equal(imported.state_dict()[k], v) for k, v in model.state_dict().items())
    torch.save({"state_dict": state, "config": _TrainingConfig()}, tmp_path / "with_config.pth")
    with pytest.raises(OfficialImportError, match="weights_only"):
        import_official_checkpoint(tmp_path / "with_config.pth", config)
    with pytest.raises(OfficialImportError, match="not found"):
        import_official_checkpoint(tmp_path / "absent.pth", config)
