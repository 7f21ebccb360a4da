"""The shared data folder that some benchmarks read (the real video, detector and pose models, real crops)."""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def add_shared_option(parser: argparse.ArgumentParser, holds: str) -> None:
    """Add ``--shared``, the folder holding ``holds`` (e.g. "video/, models/"): shared/data beside the checkout."""
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help=f"the shared data folder ({holds}); default: shared/data beside the checkout")
