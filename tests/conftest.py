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
