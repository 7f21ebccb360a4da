"""Shared fixtures: small synthetic archives, tiny checkpoints, and the path to ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# As the CLI does: Prefect quiet at INFO (its shutdown line would hit pytest's closed capture stream)
# and without telemetry (which races the ephemeral server's SQLite).
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip when this checkout has no shared folder beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (see README: where the shared files come from)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny KPR checkpoint with seeded random weights: enough to exercise ingestion and search."""
    import torch

    from kpr_model.checkpoint import save_checkpoint
    from kpr_model.config import KPRConfig
    from kpr_model.model import KPR

    torch.manual_seed(0)
    config = KPRConfig.tiny()
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(KPR(config).eval(), config, path)
    return path


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory) -> Path:
    """A small synthetic multi-camera archive (videos + sidecars), rendered once per test session."""
    from training.synthetic import WorldConfig, generate_archive

    out = tmp_path_factory.mktemp("archive")
    generate_archive(out, WorldConfig.small(seed=3))
    return out


@pytest.fixture(scope="session")
def tiny_global_onnx(tmp_path_factory) -> Path:
    """A tiny global ReID ONNX model (seeded random CNN: stem with max-pooling, 4x2 feature map, 32-d embedding,
    64x32 NCHW input of RGB pixels 0..255 recorded in its metadata): a real-data model's stand-in for tests."""
    import onnx
    import torch
    from torch import nn

    from kpr_model.global_onnx import INPUT_METADATA_KEY

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32)).eval()
    path = tmp_path_factory.mktemp("global_onnx") / "tiny_global.onnx"
    torch.onnx.export(net, torch.zeros(2, 3, 64, 32), str(path), input_names=["images"], output_names=["embedding"],
                      dynamic_axes={"images": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
    model = onnx.load(str(path))
    model.metadata_props.add(key=INPUT_METADATA_KEY, value="rgb255")
    onnx.save(model, str(path))
    return path
