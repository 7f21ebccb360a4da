"""Import of official KPR checkpoints: exact official names/shapes (spec TSV), strictness, prompt channel order,
torchreid files read without their code, camera embedding, semantic weight, bad files."""
from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch

from kpr_model import KPR, KPRConfig, KPREncoder, KPRModelError, empty_prompt, load_checkpoint, read_checkpoint_info
from kpr_model.official_import import (
    OfficialImportError,
    import_official_checkpoint,
    import_official_file,
    import_official_state_dict,
    write_official_model,
    infer_config,
    official_prompt_order,
)
from pipelines.cli import main
from training.benchmark import kpr_embeddings, uses_camera_term
from training.samples import LoadedSample

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


def tiny_model(**changes) -> KPR:
    """A seeded tiny SOLIDER KPR (4 identities) whose prompt tokenizer and BN statistics are not at their init."""
    torch.manual_seed(0)
    model = KPR(KPRConfig.tiny_solider(num_classes=4, **changes)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.backbone.masks_patch_embed.projection.weight, std=0.3)
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(0, 0.1)
    return model


def official_names(model: KPR) -> dict[str, torch.Tensor]:
    """``model``'s state dict under the official names (inverse of the import mapping), as an official file holds it."""
    state = {}
    groups = model.config.num_prompt_channels - 2
    inverse = {0: 0, **{2 + g: 1 + g for g in range(groups)}, 1: groups + 1}  # official channel -> our channel
    for key, value in model.state_dict().items():
        if key == "backbone.sie_embed":
            name = B + "sie_embed"
        elif key.startswith("backbone.features.model."):
            name = B + "model." + key[len("backbone.features.model."):]
        elif key.startswith("backbone.masks_patch_embed."):
            name = B + "masks_patch_embed." + key[len("backbone.masks_patch_embed."):]
            if name.endswith("projection.weight"):
                value = value[:, [inverse[i] for i in range(groups + 2)]]
        elif key.startswith("backbone.msf.dim_reduce."):
            name = "msf.dim_reduce.layers." + key[len("backbone.msf.dim_reduce."):]
        else:
            name = key
        state[name] = value.clone()
    for key in [k for k in state if k.startswith(B + "model.patch_embed.")]:
        state[key.replace(B + "model.", B)] = state[key].clone()
    state[B + "parts_embed"] = torch.zeros(groups + 2, 1, 16)
    return state


def test_full_size_torchreid_file_with_camera_embedding(tsv_rows, tmp_path, caplog) -> None:
    state = official_like_state(tsv_rows)
    state[B + "sie_embed"] = torch.randn(8, 1, 128) * 0.02
    for i, dim in enumerate((256, 512, 1024, 1024)):  # SOLIDER's semantic layers, unused under semantic weight -1
        for kind in ("w", "b"):
            state[f"{B}model.semantic_embed_{kind}.{i}.weight"] = torch.randn(dim, 2)
            state[f"{B}model.semantic_embed_{kind}.{i}.bias"] = torch.zeros(dim)
    config = official_config(data__height=384, data__width=128)
    path = save_torchreid_file(tmp_path / "kpr_occ_duke_SOLIDER.pth.tar", state, config)
    model_id, notes = write_official_model(path, tmp_path / "model")
    with caplog.at_level(logging.INFO, logger="kpr_model.checkpoint"):
        model, imported, loaded_id = load_checkpoint(tmp_path / "model")
    said = "camera embedding (8 cameras of occluded_duke) is left out"
    assert [said in record.getMessage() for record in caplog.records] == [True]
    assert loaded_id == model_id and imported.image_size == (384, 128) and imported.num_classes == 702
    assert (imported.camera_embeddings, imported.camera_dataset) == (8, "occluded_duke")
    assert torch.equal(model.backbone.sie_embed, state[B + "sie_embed"])
    assert not any("semantic_embed" in k for k in model.state_dict())
    assert notes[0] == "semantic weight -1 (from the official occluded_duke test configuration); semantic layers unused"
    semantic = import_official_file(path, semantic_weight=0.2).model.state_dict()  # SOLIDER's own shapes load
    assert torch.equal(semantic["backbone.features.model.semantic_embed_b.3.weight"],
                       state[B + "model.semantic_embed_b.3.weight"])


@pytest.fixture(scope="module")
def tiny_official() -> tuple[KPRConfig, dict[str, torch.Tensor], KPR]:
    """A tiny SOLIDER KPR, its config and its weights under official names."""
    model = tiny_model()
    return model.config, official_names(model), model


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
        import_official_state_dict({**state, B + "cls_token": torch.ones(1, 1, 16)}, config)
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


class _Unlisted:
    """An object of a class no allowlist knows, as a file that pickles arbitrary objects holds."""


def test_checkpoint_files(tiny_official, tmp_path) -> None:
    config, state, model = tiny_official
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 120}, tmp_path / "kpr.pth")
    imported = import_official_checkpoint(tmp_path / "kpr.pth", config)
    assert all(torch.equal(imported.state_dict()[k], v) for k, v in model.state_dict().items())
    torch.save({"state_dict": state, "extra": _Unlisted()}, tmp_path / "unlisted.pth")
    with pytest.raises(KPRModelError, match="_Unlisted, which is not loaded"):
        import_official_checkpoint(tmp_path / "unlisted.pth", config)
    with pytest.raises(KPRModelError, match="not found"):
        import_official_checkpoint(tmp_path / "absent.pth", config)


class CfgNode(dict):
    """Stands for yacs' CfgNode, pickled under its module name: a dict carrying yacs' own attributes (a set among them)."""

    __module__ = "yacs.config"

    def __init__(self, init: dict | None = None) -> None:
        super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in (init or {}).items()})
        self.__dict__.update({"__immutable__": False, "__deprecated_keys__": set(), "__renamed_keys__": {},
                              "__new_allowed__": False})


def official_config(semantic_weight: float = -1.0, **sections) -> dict:
    """A training config tree as torchreid saves it (the settings the import reads), sections overridden."""
    tree = {
        "data": {"sources": ["occluded_duke"], "targets": ["occluded_duke"], "height": 64, "width": 32,
                 "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5]},
        "model": {"kpr": {"backbone": "solider_swin_base_patch4_window7_224", "test_embeddings": ["bn_foreg", "parts"],
                          "keypoints": {"vis_thresh": 0.3, "prompt_preprocess": "cck8"}, "masks": {"preprocess": "eight"}},
                  "solider": {"semantic_weight": semantic_weight},
                  "transreid": {"cam_num": 8, "sie_camera": True, "sie_coe": 3.0, "sie_view": False}},
        "test": {"dist_metric": "euclidean", "normalize_feature": True, "rerank": False},
    }
    for dotted, value in sections.items():
        *path, last = dotted.split("__")
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return tree


def save_torchreid_file(path: Path, model: KPR | dict[str, torch.Tensor], config: dict | None, **extra) -> Path:
    """Write ``model`` (or a state dict under official names) as torchreid's save_checkpoint does: weights with
    ``module.``, the yacs config, numpy metrics, optimizer and scheduler state. yacs.config is a stand-in module
    while saving only."""
    head = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(head.parameters(), lr=2e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=120)
    optimizer.state[head.weight] = {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 4)}
    official = official_names(model) if isinstance(model, KPR) else model
    payload = {"state_dict": {f"module.{k}": v for k, v in official.items()}, "epoch": 120, "rank1": np.float64(0.8425), "mAP": np.float32(0.7512),
               "ssmd": np.array([0.1, 0.2]), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               **extra}
    if config is not None:
        payload["config"] = CfgNode(config)
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    yacs_config.CfgNode, yacs.config = CfgNode, yacs_config
    with patch.dict(sys.modules, {"yacs": yacs, "yacs.config": yacs_config}):
        torch.save(payload, path)
    assert "yacs.config" not in sys.modules
    return path


def embed(model: KPR, cameras: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """forward_reid of two seeded images, one with a keypoint prompt."""
    config = model.config
    images = torch.randn(2, 3, *config.image_size, generator=torch.Generator().manual_seed(5))
    prompt = empty_prompt(2, config.image_size, config)
    prompt[0, 2, 10:30], prompt[0, 0, 10:30] = 1.0, 0.0
    with torch.no_grad():
        return model.forward_reid(images, prompt, cameras)


def test_torchreid_file_becomes_a_model_folder(tmp_path) -> None:
    model = tiny_model()
    path = save_torchreid_file(tmp_path / "kpr_occ_duke_SOLIDER.pth.tar", model, official_config())
    assert main(["import-official", str(path), "--out", str(tmp_path / "model")]) == 0
    imported, config, _ = load_checkpoint(tmp_path / "model")
    assert config == model.config
    assert all(torch.equal(imported.state_dict()[k], v) for k, v in model.state_dict().items())
    _, _, metadata = read_checkpoint_info(tmp_path / "model")
    assert metadata["official_import"] == {"file": path.name, "epoch": 120, "rank1": 0.8425,
                                           "mAP": pytest.approx(0.7512), "trained_on": "occluded_duke",
                                           "semantic_weight_from": "the official occluded_duke test configuration"}
    encoder = KPREncoder.from_checkpoint(tmp_path / "model")  # what ingest, search, serve and bench open
    assert encoder.embed([np.full((90, 40, 3), 120, np.uint8)]).parts.shape == (1, 8, 32)


FIVE_V = {"num_parts": 5, "part_grouping": "five_v", "prompt_grouping": "cck6"}


def test_market_style_five_part_cck6_file_imports_with_identical_embeddings(tmp_path) -> None:
    model = tiny_model(**FIVE_V)
    assert model.backbone.masks_patch_embed.projection.weight.shape[1] == 8  # background, 6 groups, negative
    market = official_config(data__sources=["market1501"], model__kpr__keypoints__prompt_preprocess="cck6",
                             model__kpr__masks__preprocess="five_v", model__transreid__sie_camera=False)
    path = save_torchreid_file(tmp_path / "kpr_market_SOLIDER.pth.tar", model, market)
    assert main(["import-official", str(path), "--out", str(tmp_path / "model")]) == 0
    imported, config, _ = load_checkpoint(tmp_path / "model")
    assert config == model.config
    assert (config.num_parts, config.part_grouping, config.prompt_grouping) == (5, "five_v", "cck6")
    assert all(torch.equal(imported.state_dict()[k], v) for k, v in model.state_dict().items())
    for ours, reference in zip(embed(imported), embed(model)):
        assert torch.equal(ours, reference)
    encoder = KPREncoder.from_checkpoint(tmp_path / "model")
    assert encoder.embed([np.full((90, 40, 3), 120, np.uint8)]).parts.shape == (1, 5, 32)

    bare = tmp_path / "bare.pth"  # no config: the only groupings of 6 prompt groups and 5 parts
    torch.save(official_names(model), bare)
    assert import_official_file(bare).config == model.config.with_updates(image_size=(384, 128))
    eight = save_torchreid_file(tmp_path / "eight.pth.tar", model,
                                official_config(model__kpr__keypoints__prompt_preprocess="cck6"))  # masks: eight
    with pytest.raises(OfficialImportError, match="names the 'eight' grouping .8 parts. but its tensors hold 5 parts"):
        import_official_file(eight)


def test_bare_and_module_prefixed_state_dicts(tmp_path) -> None:
    model = tiny_model()
    state = official_names(model)
    torch.save(state, tmp_path / "bare.pth")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pth")
    for name in ("bare.pth", "prefixed.pth"):
        imported = import_official_file(tmp_path / name)
        # no config: the official Swin-B input size and semantic weight -1
        assert imported.config == model.config.with_updates(image_size=(384, 128))
        assert all(torch.equal(imported.model.state_dict()[k], v) for k, v in model.state_dict().items())


def test_camera_embedding_only_with_camera_ids(tmp_path) -> None:
    model = tiny_model(camera_embeddings=8, camera_dataset="occluded_duke")
    path = save_torchreid_file(tmp_path / "sie.pth.tar", model, official_config())
    imported = import_official_file(path)
    assert (imported.config.camera_embeddings, imported.config.camera_embedding_scale,
            imported.config.camera_dataset) == (8, 3.0, "occluded_duke")
    assert any("camera embedding of 8 cameras (occluded_duke)" in note for note in imported.notes)
    sie = model.backbone.sie_embed.detach()
    assert torch.equal(imported.model.backbone.sie_embed, sie)

    without = KPR(model.config.with_updates(camera_embeddings=0, camera_dataset="")).eval()
    without.load_state_dict({k: v for k, v in model.state_dict().items() if k != "backbone.sie_embed"})
    for ours, reference in zip(embed(imported.model), embed(without)):  # no camera ids: the feature extractor's way
        assert torch.equal(ours, reference)

    cameras = torch.tensor([5, 2])  # the test engine's way: 3 x sie_embed[camera] added to the patch tokens
    hook = without.backbone.features.model.patch_embed.register_forward_hook(
        lambda _module, _inputs, tokens: tokens + 3.0 * sie[cameras][:, :, None, :])
    reference = embed(without)
    hook.remove()
    for ours, expected in zip(embed(imported.model, cameras), reference):
        assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(embed(imported.model, cameras)[1], embed(imported.model)[1], atol=1e-4)

    encoder = KPREncoder(imported.model, imported.config)
    samples = [LoadedSample(np.full((90, 40, 3), 60 * i, np.uint8), np.zeros((17, 3), np.float32),
                            np.zeros((0, 17, 3), np.float32), None, pid=i, camid=c) for i, c in enumerate([5, 2, 7])]
    crops = [s.image for s in samples]
    assert uses_camera_term(imported.config, "Occluded_Duke") and not uses_camera_term(imported.config, "market1501")
    on = kpr_embeddings(encoder, samples, False, "occluded_duke")
    assert np.array_equal(on.parts, encoder.embed(crops, cameras=[5, 2, 7]).parts)
    assert np.array_equal(kpr_embeddings(encoder, samples, False, "market1501").parts, encoder.embed(crops).parts)

    turned_off = save_torchreid_file(tmp_path / "sie_off.pth.tar", model,
                                     official_config(model__transreid__sie_camera=False))
    assert import_official_file(turned_off).config.camera_embeddings == 0


def test_semantic_weight_follows_the_official_test_config_else_the_file(tmp_path) -> None:
    args = dict(KPRConfig.tiny_solider().backbone_args, semantic_weight=0.2)
    model = tiny_model(backbone_args=args)
    # Occluded-Duke's official test configuration runs -1 whatever the training config said.
    with_config = save_torchreid_file(tmp_path / "semantic.pth.tar", model, official_config(semantic_weight=0.2))
    occluded_duke = import_official_file(with_config)
    assert occluded_duke.config.backbone_args["semantic_weight"] == -1.0
    assert occluded_duke.notes[0].startswith("semantic weight -1 (from the official occluded_duke test configuration)")
    # PoseTrack's test configuration does not set it: the file's own value.
    posetrack = save_torchreid_file(tmp_path / "posetrack.pth.tar", model,
                                    official_config(semantic_weight=0.2, data__sources=["occ_PoseTrack21"]))
    imported = import_official_file(posetrack)
    assert imported.config == model.config
    # Trained on Market-1501 but tested on Occluded-ReID: that test configuration does not set it either.
    occluded_reid = save_torchreid_file(tmp_path / "occ_reid.pth.tar", model, official_config(
        semantic_weight=0.2, data__sources=["market1501"], data__targets=["market1501", "occluded_reid"]))
    assert import_official_file(occluded_reid).config.backbone_args["semantic_weight"] == 0.2
    market = save_torchreid_file(tmp_path / "market.pth.tar", model, official_config(
        semantic_weight=0.2, data__sources=["market1501"], data__targets=["market1501"]))
    assert import_official_file(market).config.backbone_args["semantic_weight"] == -1.0
    for ours, reference in zip(embed(imported.model), embed(model)):
        assert torch.equal(ours, reference)

    bare = tmp_path / "semantic_bare.pth"
    torch.save(official_names(model), bare)
    unused = import_official_file(bare)  # no config: the official test configuration, semantic layers dropped
    assert unused.config.backbone_args["semantic_weight"] == -1.0
    assert not any("semantic_embed" in k for k in unused.model.state_dict())
    assert import_official_file(with_config, semantic_weight=-1.0).config.backbone_args["semantic_weight"] == -1.0
    assert import_official_file(bare, semantic_weight=0.2).config == model.config.with_updates(image_size=(384, 128))
    assert import_official_file(with_config, semantic_weight=0.2).config.backbone_args["semantic_weight"] == 0.2
    with pytest.raises(OfficialImportError, match="semantic layers"):
        import_official_file(save_torchreid_file(tmp_path / "plain.pth.tar", tiny_model(), None), semantic_weight=0.2)


def _truncated(tmp_path: Path) -> Path:
    path = save_torchreid_file(tmp_path / "truncated.pth.tar", tiny_model(), official_config())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _other_model(tmp_path: Path) -> Path:
    torch.save({"state_dict": torch.nn.Conv2d(3, 8, 3).state_dict(), "epoch": 3}, tmp_path / "resnet.pth.tar")
    return tmp_path / "resnet.pth.tar"


def _unknown_object(tmp_path: Path) -> Path:
    return save_torchreid_file(tmp_path / "unknown.pth.tar", tiny_model(), official_config(), hook=_Unlisted())


def _unsupported_config(tmp_path: Path) -> Path:
    config = official_config(model__kpr__test_embeddings=["globl", "parts"])
    return save_torchreid_file(tmp_path / "globl.pth.tar", tiny_model(), config)


def _unknown_grouping(tmp_path: Path) -> Path:
    config = official_config(model__kpr__masks__preprocess="six")
    return save_torchreid_file(tmp_path / "six.pth.tar", tiny_model(), config)


def _grouping_of_other_size(tmp_path: Path) -> Path:
    config = official_config(model__kpr__keypoints__prompt_preprocess="cck6")
    return save_torchreid_file(tmp_path / "cck6.pth.tar", tiny_model(), config)


def _wrong_camera_count(tmp_path: Path) -> Path:
    model = tiny_model(camera_embeddings=8, camera_dataset="occluded_duke")
    return save_torchreid_file(tmp_path / "cams.pth.tar", model, official_config())


@pytest.mark.parametrize("make, extra, message", [
    (_truncated, [], "not a complete torch file"),
    (_other_model, [], "not an official KPR SOLIDER state dict"),
    (_unknown_object, [], "pickled test_official_import._Unlisted, which is not loaded"),
    (_unsupported_config, [], "model.kpr.test_embeddings=['globl', 'parts']; the project runs only"),
    (_unknown_grouping, [], "model.kpr.masks.preprocess='six'; the project runs only 'eight' or 'five_v'"),
    (_grouping_of_other_size, [], "names the 'cck6' grouping (6 prompt groups) but its tensors hold 8 prompt groups"),
    (_wrong_camera_count, ["--dataset-cameras", "6"], "of 8 cameras, but its training dataset was said to have 6"),
])
def test_bad_files_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, make, extra, message) -> None:
    path = make(tmp_path)
    before = set(tmp_path.iterdir())
    assert main(["import-official", str(path), "--out", str(tmp_path / "model"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kpr import-official: error: ") and err.count("\n") == 1 and message in err, err
    assert set(tmp_path.iterdir()) == before


def test_existing_folder_is_not_overwritten(tmp_path, capsys) -> None:
    path = save_torchreid_file(tmp_path / "kpr.pth.tar", tiny_model(), official_config())
    (tmp_path / "model").mkdir()
    assert main(["import-official", str(path), "--out", str(tmp_path / "model")]) == 2
    assert "already exists" in capsys.readouterr().err and not any((tmp_path / "model").iterdir())
