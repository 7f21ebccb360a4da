"""Prefect flow `adapt-model`: adapt a KPR checkpoint (or KPR on a global ReID model's trunk) to an ingested archive
without labels. Orchestration only.

Two tasks: the store's tracklets become pseudo-identities and their crops are re-cut from the videos into a
samples file (pipelines/adapt_samples.py), then training/adapt.py fine-tunes the checkpoint on it (Ray
Train workers when ``workers`` > 0) and writes the new checkpoint. The samples file lives in a temporary
folder beside the output checkpoint (so Ray workers of one machine read it) and is removed afterwards.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from kpr_model.from_global import starting_config
from kpr_model.global_onnx import GlobalOnnxEncoder
from kpr_model.model_facts import is_onnx, trainable_facts
from pipelines.adapt_samples import SampleSelection, export_archive_samples
from pipelines.errors import UserError
from storage import Store
from training.adapt import adapt
from training.adapt_config import AdaptConfig
from workers.ray_stages import ensure_ray

SAMPLES_FILE = "adapt_samples.npz"


@dataclass
class AdaptInputs:
    """What an adaptation reads and writes: the store, the KPR checkpoint, the new checkpoint, an optional teacher."""

    db: str
    model: str
    out: str
    teacher: str | None = None
    selection: SampleSelection = field(default_factory=SampleSelection)

    def __post_init__(self) -> None:
        """A global ReID model to start from teaches too, unless another teacher is given."""
        if self.teacher is None and is_onnx(self.model):
            self.teacher = self.model

    def check(self) -> Store:
        """The opened store, after refusing (one UserError/StoreError/model error line) what cannot be adapted."""
        if Path(self.out).exists():
            raise UserError(f"{self.out} already exists: give a new folder for the adapted checkpoint")
        trainable_facts(self.model)
        store = Store.open(self.db, create=False)
        if not store.count_tracklets():
            raise UserError(f"store {self.db} holds no tracklets: ingest an archive into it first (kpr ingest)")
        if self.teacher is not None:
            GlobalOnnxEncoder(self.teacher, threads=1)
        return store


def adaptation_report(result: dict) -> str:
    """The run's Markdown artifact: what the archive gave and how the adaptation ran."""
    source = result["source"]
    return "\n".join([
        f"# Adaptation: `{result['adapted_from']}` -> `{result['checkpoint']}` (model_id `{result['model_id']}`)",
        "| store | cameras | tracklets | pseudo-identities | crops | teacher | steps | train s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {source['store']} | {source['cameras']} | {source['tracklets']} | {source['pseudo_identities']} "
        f"| {source['crops']} | {source['teacher'] or 'none'} | {result['steps']} | {result['train_s']:.0f} |",
    ])


@task(name="export-adapt-samples")
def export_samples(inputs: AdaptInputs, path: str) -> dict:
    """The store's pseudo-labelled crops, written to ``path``; what was kept, in numbers."""
    teacher = None if inputs.teacher is None else GlobalOnnxEncoder(inputs.teacher)
    config = starting_config(inputs.model)[0]
    return export_archive_samples(Store.open(inputs.db, create=False), config, path, inputs.selection, teacher)


@task(name="adapt-kpr")
def run_adaptation(config: AdaptConfig, provenance: dict) -> dict:
    """Fine-tune the checkpoint on the samples file and save the adapted checkpoint."""
    return adapt(config, provenance)


@flow(name="adapt-model")
def adapt_model(db: str, model: str, out: str, teacher: str | None = None, overrides: dict[str, Any] | None = None,
                selection: dict[str, Any] | None = None, ray_address: str | None = None) -> dict:
    """Adapt checkpoint ``model`` to the archive ingested into store ``db``, writing checkpoint ``out``.

    ``overrides``: AdaptConfig fields (epochs, max_minutes, workers, part_masks, distill_weight, ...);
    ``selection``: SampleSelection fields; ``teacher``: a global ReID ONNX model to distil from.
    """
    inputs = AdaptInputs(db, model, out, teacher, SampleSelection(**(selection or {})))
    inputs.check()
    Path(out).resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(out).resolve().parent, prefix=".kpr-adapt-") as folder:
        samples = str(Path(folder) / SAMPLES_FILE)
        config = AdaptConfig.from_dict({**(overrides or {}), "samples": samples, "model": model, "out": out})
        provenance = export_samples(inputs, samples)
        if config.workers:
            ensure_ray(ray_address)
        result = run_adaptation(config, provenance)
    get_run_logger().info("adapted %s into %s (model_id %s)", model, out, result["model_id"])
    create_markdown_artifact(adaptation_report(result), key="adaptation-report", description="KPR adaptation report")
    return result
