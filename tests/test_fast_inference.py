"""The optimised inference path gives the eager model's embeddings: fp32 to 1e-4, bf16 to cosine 0.999."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kpr_model.config import KPRConfig
from kpr_model.encoder import KPREncoder
from kpr_model.fast_inference import FastKPREncoder, autocast_for, optimised_kpr
from kpr_model.model import KPR
from kpr_model.prompts import keypoints_to_prompt

CONFIGS = {"tiny": KPRConfig.tiny, "tiny_solider": KPRConfig.tiny_solider, "tiny_swin": KPRConfig.tiny_swin,
           "tiny_vit": KPRConfig.tiny_vit}


def trained_like(config: KPRConfig) -> KPR:
    """A random KPR whose batch norms hold non-trivial statistics and whose prompt tokenizer and heads are not ~0,
    so folding them and the part maps matter."""
    torch.manual_seed(0)
    model = KPR(config)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(shape, generator=generator) * 0.1)
    with torch.no_grad():
        tokenizer = [p for p in model.backbone.masks_patch_embed.parameters() if p.ndim == 4]
        for weight in [model.pixel_classifier.classifier.weight, *tokenizer]:
            weight.normal_(0.0, 0.05, generator=generator)
    return model.eval()


def inputs(config: KPRConfig, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and prompts from random target + negative skeletons."""
    rng = np.random.default_rng(0)
    height, width = config.image_size
    skeletons = (rng.uniform(0, 1, (n, 2, 17, 3)) * [width, height, 1.0]).astype(np.float32)
    prompts = keypoints_to_prompt(list(skeletons[:, 0]), list(skeletons[:, 1:]), config.image_size, config)
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(2)), prompts


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows of two embedding tensors [..., D]."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def eager_and_optimised(name: str, dtype: str = "fp32", compile_backend: str | None = None, n: int = 6) -> tuple:
    """(eager fp32 ``forward_reid`` outputs, optimised-path outputs under ``dtype``) of one random batch."""
    config = CONFIGS[name]()
    model = trained_like(config)
    images, prompts = inputs(config, n)
    fast = optimised_kpr(model, "cpu", channels_last=True, compile_backend=compile_backend)
    with torch.inference_mode():
        expected = model.forward_reid(images, prompts)
        with autocast_for(torch.device("cpu"), dtype):
            got = fast(images.contiguous(memory_format=torch.channels_last), prompts)
    return expected, got


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fp32_matches_the_eager_model(name: str) -> None:
    expected, got = eager_and_optimised(name)
    for want, have in zip(expected, got):
        assert have.shape == want.shape
        torch.testing.assert_close(have, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["tiny", "tiny_solider"])
def test_bf16_embeddings_keep_cosine_0999(name: str) -> None:
    expected, (holistic, parts, visibility) = eager_and_optimised(name, dtype="bf16")
    assert cosines(holistic, expected[0]).min() >= 0.999
    assert cosines(parts, expected[1]).min() >= 0.999
    assert (visibility - expected[2]).abs().max() <= 0.05


def test_compiled_path_matches_the_eager_model() -> None:
    """torch.compile (inductor, static shapes) on CPU: the slow test of this file (~3.5 min on 2 busy cores, cold cache)."""
    expected, got = eager_and_optimised("tiny_solider", compile_backend="inductor", n=4)
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=1e-4, rtol=0)


def test_encoder_pads_to_a_fixed_batch_and_matches_the_eager_encoder() -> None:
    config = KPRConfig.tiny()
    model = trained_like(config)
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (int(rng.integers(40, 90)), int(rng.integers(20, 50)), 3), dtype=np.uint8)
             for _ in range(7)]
    keypoints = [(rng.uniform(0, 1, (17, 3)) * [c.shape[1], c.shape[0], 1.0]).astype(np.float32) for c in crops]
    eager = KPREncoder(model, config).embed(crops, keypoints, batch_size=4)
    fast_encoder = FastKPREncoder(model, config, device="cpu", dtype="fp32", compile_backend=None)
    fast = fast_encoder.embed(crops, keypoints, batch_size=4)
    assert fast_encoder.batch_shape == 4
    np.testing.assert_allclose(fast.global_emb, eager.global_emb, atol=1e-4)
    np.testing.assert_allclose(fast.parts, eager.parts, atol=1e-4)
    np.testing.assert_allclose(fast.visibility, eager.visibility, atol=1e-4)


def test_encoder_falls_back_to_the_uncompiled_graph_when_compilation_fails() -> None:
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    config = KPRConfig.tiny()
    model = trained_like(config)
    crops = [np.random.default_rng(4).integers(0, 256, (60, 30, 3), dtype=np.uint8) for _ in range(3)]
    eager = KPREncoder(model, config).embed(crops)
    encoder = FastKPREncoder(model, config, device="cpu", dtype="fp32", compile_backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        first = encoder.embed(crops)
    np.testing.assert_allclose(first.global_emb, eager.global_emb, atol=1e-4)
    np.testing.assert_allclose(encoder.embed(crops).parts, eager.parts, atol=1e-4)
