"""Adaptation entry point: fine-tune a KPR checkpoint (or KPR on a global ReID model's trunk) on an archive's samples, here or on Ray Train workers.

The samples file (training/adapt_samples.py) holds the archive's crops, their keypoints and pseudo-identities;
training/loop.py runs on them starting from the checkpoint's weights (new identity classifiers for the
pseudo-identities), with keypoint part pseudo-masks and an optional teacher, and the result is saved as a
new checkpoint whose metadata records how it was adapted.
"""
from __future__ import annotations

import sys
from dataclasses import asdict

import torch

from kpr_model.checkpoint import save_checkpoint
from kpr_model.config import KPRConfig
from kpr_model.from_global import starting_config, starting_point
from training.adapt_config import AdaptConfig
from training.adapt_samples import ArchiveSamples
from training.loop import Distillation, LoopResult, WorkerContext, run_loop
from training.ray_train import RayWorkerContext, fit_on_ray, result_of
from training.train import LocalContext


def _adapted_config(start: KPRConfig, samples: ArchiveSamples) -> KPRConfig:
    """The starting model's config with one identity class per pseudo-identity."""
    return start.with_updates(num_classes=samples.num_identities)


def _run(cfg: AdaptConfig, ctx: WorkerContext) -> LoopResult:
    """The training loop of one worker on the samples file, from the starting model's weights."""
    samples = ArchiveSamples.load(cfg.samples)
    model, config = starting_point(cfg.model)[:2]
    start = model.state_dict()
    config = _adapted_config(config, samples)
    teacher = (Distillation(samples.teacher, cfg.distill_weight)
               if samples.teacher is not None and cfg.distill_weight > 0 else None)
    return run_loop(cfg.loop_settings(), config, samples.loaded(config, cfg.part_masks), samples.labels.tolist(), ctx,
                    cfg.augment, initial_state=start, distillation=teacher)


def _worker_loop(values: dict) -> None:
    """What each Ray Train worker runs: the shared loop on its share of the PK batches."""
    cfg = AdaptConfig.from_dict(values)
    torch.set_num_threads(cfg.cpus_per_worker)
    _run(cfg, RayWorkerContext())


def adapt(cfg: AdaptConfig, provenance: dict | None = None) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.samples`` and save it at ``cfg.out``; the run's summary.

    ``provenance`` (where the samples came from: store, pseudo-label settings) is recorded in the checkpoint.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start_config, start_id = starting_config(cfg.model)
    if cfg.workers:
        samples = ArchiveSamples.load(cfg.samples)
        result = result_of(fit_on_ray(_worker_loop, asdict(cfg), cfg, cfg.out), _adapted_config(start_config, samples))
    else:
        result = _run(cfg, LocalContext())
    summary = {"steps": result.steps, "epochs_completed": result.epochs_completed, "train_s": result.train_s,
               "samples_per_s": result.samples_per_s, "workers": cfg.workers, "last_losses": result.last_losses,
               "adapted_from": start_id, "source": provenance or {},
               "adapt_config": {k: v for k, v in asdict(cfg).items() if k != "augment"}}
    summary["model_id"] = save_checkpoint(result.model, result.model.config, cfg.out,
                                          metadata={"adaptation": summary})
    summary["checkpoint"] = cfg.out
    print(f"adapted {cfg.model} in {result.train_s:.0f} s ({result.steps} steps); checkpoint {cfg.out}",
          file=sys.stderr)
    return summary
