"""ONNX export and the onnxruntime encoder: parity with the PyTorch encoder, dynamic batch, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kpr_model import (
    KPR,
    KPRConfig,
    KPREncoder,
    KPRModelError,
    OnnxKPREncoder,
    OnnxModelError,
    compute_model_id,
    export_checkpoint_onnx,
    export_onnx,
    keypoints_to_prompt,
    prepare_crops,
    read_model_id,
)
from kpr_model.export import KPRInferenceGraph
from kpr_model.onnx_format import INPUT_NAMES

torch.set_num_threads(2)

EMB_TOL = 1e-4
# Parity of binary visibility needs every pixel's argmax to be unambiguous: the winning part-map
# probability must beat the runner-up by far more than the float error between the two runtimes
# (about 1e-6 on these models; randomly initialised Swin part maps have runners-up within 1e-3).
ARGMAX_MARGIN = 1e-4

CROP_SIZES = ((64, 32), (120, 50), (33, 17), (200, 90), (48, 48), (96, 40), (70, 30))


def skeleton(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible standing-person skeleton [17, 3] for a crop, jittered, with some low-confidence points."""
    base = np.array([
        (16, 6), (17, 5), (15, 5), (18, 6), (14, 6), (22, 16), (10, 16), (24, 26), (8, 26),
        (24, 34), (8, 34), (20, 36), (12, 36), (20, 48), (12, 48), (20, 60), (12, 60),
    ], np.float32)
    kps = np.zeros((17, 3), np.float32)
    kps[:, 0] = base[:, 0] * width / 32 + rng.normal(0, 1, 17)
    kps[:, 1] = base[:, 1] * height / 64 + rng.normal(0, 1, 17)
    kps[:, 2] = rng.uniform(0.1, 1.0, 17)
    return kps


def randomise_(model: KPR) -> KPR:
    """Give the untrained-only parts of the network non-trivial values so parity covers them."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
        for param in model.backbone.masks_patch_embed.parameters():
            param.normal_(0.0, 0.3, generator=gen)
        model.pixel_classifier.classifier.weight.normal_(0.0, 0.5, generator=gen)
    return model


@pytest.fixture(scope="module")
def tiny() -> KPRConfig:
    return KPRConfig.tiny()


@pytest.fixture(scope="module")
def tiny_model(tiny: KPRConfig) -> KPR:
    torch.manual_seed(0)
    return randomise_(KPR(tiny)).eval()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory, tiny: KPRConfig, tiny_model: KPR) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_model, tiny, path)
    return path


@pytest.fixture(scope="module")
def onnx_encoder(onnx_path: Path) -> OnnxKPREncoder:
    return OnnxKPREncoder(onnx_path, device="cpu", threads=2)


@pytest.fixture(scope="module")
def inputs() -> tuple[list[np.ndarray], list[np.ndarray | None], list[np.ndarray | None]]:
    """Crops of several sizes; some with target keypoints, some with negatives, some with neither."""
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in CROP_SIZES]
    keypoints = [skeleton(h, w, rng) if i % 3 != 1 else None for i, (h, w) in enumerate(CROP_SIZES)]
    negatives = [
        np.stack([skeleton(h, w, rng) + [w / 3, 0, 0] for _ in range(i % 3)]) if i % 2 == 0 and i % 3 else None
        for i, (h, w) in enumerate(CROP_SIZES)
    ]
    assert any(n is not None for n in negatives) and any(k is None for k in keypoints)
    return crops, keypoints, negatives


def argmax_margin(model: KPR, images: torch.Tensor, prompts: torch.Tensor) -> float:
    """Smallest gap, over all pixels, between the best and second-best part-map probability."""
    with torch.no_grad():
        top2 = model(images, prompts).part_maps.topk(2, dim=1).values
    return float((top2[:, 0] - top2[:, 1]).min())


def assert_parity(expected, actual, label: str) -> None:
    global_diff = float(np.abs(expected.global_emb - actual.global_emb).max())
    parts_diff = float(np.abs(expected.parts - actual.parts).max())
    vis_diff = float(np.abs(expected.visibility - actual.visibility).max())
    print(f"{label}: max abs diff global {global_diff:.2e}, parts {parts_diff:.2e}, visibility {vis_diff:.2e}")
    assert global_diff < EMB_TOL and parts_diff < EMB_TOL and vis_diff < EMB_TOL
    np.testing.assert_array_equal(expected.visibility > 0, actual.visibility > 0)


@pytest.mark.parametrize("prompting", ["none", "keypoints", "keypoints+negatives"])
def test_parity_with_pytorch_encoder(prompting: str, tiny: KPRConfig, tiny_model: KPR,
                                     onnx_encoder: OnnxKPREncoder, inputs) -> None:
    crops, keypoints, negatives = inputs
    kps = None if prompting == "none" else keypoints
    negs = negatives if prompting == "keypoints+negatives" else None
    images, prompts = prepare_crops(crops, kps, negs, tiny)
    assert argmax_margin(tiny_model, images, prompts) > ARGMAX_MARGIN
    expected = KPREncoder(tiny_model, tiny).embed(crops, kps, negs)
    actual = onnx_encoder.embed(crops, kps, negs)
    assert_parity(expected, actual, prompting)
    vis = actual.visibility > 0
    assert vis.any() and not vis.all(), "visibility should be informative for the test to mean anything"
    np.testing.assert_allclose(np.linalg.norm(actual.parts, axis=2), 1.0, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny_swin", "tiny_solider", "tiny_vit"])
def test_parity_for_transformer_backbones(preset: str, tmp_path: Path, inputs) -> None:
    if not hasattr(KPRConfig, preset):
        pytest.skip(f"KPRConfig.{preset} does not exist in this checkout")
    config = getattr(KPRConfig, preset)()
    torch.manual_seed(0)
    model = randomise_(KPR(config)).eval()
    crops, keypoints, negatives = inputs
    images, prompts = prepare_crops(crops, keypoints, negatives, config)
    assert argmax_margin(model, images, prompts) > ARGMAX_MARGIN
    export_onnx(model, config, tmp_path / f"{preset}.onnx")
    actual = OnnxKPREncoder(tmp_path / f"{preset}.onnx", device="cpu").embed(crops, keypoints, negatives)
    assert_parity(KPREncoder(model, config).embed(crops, keypoints, negatives), actual, preset)


def test_prompts_change_the_onnx_output(onnx_encoder: OnnxKPREncoder, inputs) -> None:
    crops, keypoints, negatives = inputs
    bare = onnx_encoder.embed(crops)
    prompted = onnx_encoder.embed(crops, keypoints, negatives)
    assert np.abs(bare.global_emb[0] - prompted.global_emb[0]).max() > 1e-3


def test_dynamic_batch(tiny: KPRConfig, tiny_model: KPR, onnx_encoder: OnnxKPREncoder, inputs) -> None:
    crops, keypoints, negatives = inputs
    all_at_once = onnx_encoder.embed(crops, keypoints, negatives, batch_size=7)
    one_by_one = onnx_encoder.embed(crops, keypoints, negatives, batch_size=1)
    assert_parity(all_at_once, one_by_one, "batch 7 vs batch 1")
    graph = KPRInferenceGraph(tiny_model).eval()
    for batch in (1, 7):
        images = torch.randn(batch, 3, *tiny.image_size)
        prompts = keypoints_to_prompt(
            [skeleton(*tiny.image_size, np.random.default_rng(batch)) for _ in range(batch)],
            None, tiny.image_size, tiny)
        with torch.no_grad():
            expected = [t.numpy() for t in graph(images, prompts)]
        feeds = dict(zip(INPUT_NAMES, (images.numpy(), prompts.numpy())))
        actual = onnx_encoder.session.run(None, feeds)
        for exp, act in zip(expected, actual):
            assert act.shape == exp.shape and act.shape[0] == batch
            assert float(np.abs(exp - act).max()) < EMB_TOL


def test_metadata_makes_the_file_self_describing(tiny: KPRConfig, tiny_model: KPR, onnx_path: Path,
                                                 onnx_encoder: OnnxKPREncoder) -> None:
    assert onnx_encoder.config == tiny
    assert onnx_encoder.model_id == compute_model_id(tiny_model.state_dict(), tiny)
    assert onnx_encoder.providers == ["CPUExecutionProvider"]
    assert (onnx_encoder.dim, onnx_encoder.num_parts) == (tiny.embed_dim, tiny.num_parts)
    empty = onnx_encoder.embed([])
    assert empty.global_emb.shape == (0, tiny.embed_dim) and empty.parts.shape == (0, tiny.num_parts, tiny.embed_dim)
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert props["kpr_format"] == "kpr-onnx" and props["model_id"] == onnx_encoder.model_id


def test_export_from_checkpoint_keeps_model_id(tmp_path: Path, tiny_checkpoint: Path) -> None:
    path = tmp_path / "sub" / "from_ckpt.onnx"
    model_id = export_checkpoint_onnx(tiny_checkpoint, path)
    assert model_id == read_model_id(tiny_checkpoint) == OnnxKPREncoder(path, device="cpu").model_id


def test_missing_corrupt_or_foreign_onnx_file(tmp_path: Path, onnx_path: Path) -> None:
    missing = tmp_path / "absent.onnx"
    with pytest.raises(OnnxModelError, match=str(missing)) as info:
        OnnxKPREncoder(missing)
    assert isinstance(info.value, KPRModelError)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(OnnxModelError, match=str(garbage)):
        OnnxKPREncoder(garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:5000])
    with pytest.raises(OnnxModelError, match=str(truncated)):
        OnnxKPREncoder(truncated)
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(OnnxModelError, match="not a KPR ONNX export"):
        OnnxKPREncoder(foreign)


def test_bad_input_is_rejected(tiny: KPRConfig, tiny_model: KPR, onnx_path: Path, onnx_encoder: OnnxKPREncoder,
                               inputs) -> None:
    crops, keypoints, _ = inputs
    with pytest.raises(ValueError, match="uint8"):
        onnx_encoder.embed([crops[0].astype(np.float32)])
    with pytest.raises(ValueError, match="one entry per crop"):
        onnx_encoder.embed(crops, keypoints[:2])
    with pytest.raises(ValueError, match="batch_size"):
        onnx_encoder.embed(crops, batch_size=0)
    with pytest.raises(ValueError, match="device"):
        OnnxKPREncoder(onnx_path, device="tpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(KPRModelError, match="no CUDA provider"):
            OnnxKPREncoder(onnx_path, device="cuda")
    with pytest.raises(ValueError, match="config"):
        export_onnx(tiny_model, tiny.with_updates(embed_dim=16), Path("unused.onnx"))
