"""The training split of a run, listed once per process: its samples and how many identities they hold."""
from __future__ import annotations

from dataclasses import dataclass

from kpr_model.config import KPRConfig
from training.datasets import ReIDSample, load_dataset
from training.samples import LoadedSample, load_samples
from training.run_settings import TrainConfigError
from training.train_config import TrainConfig


@dataclass(frozen=True)
class TrainingSplit:
    """The listed training samples; their pids are already the 0-based identity labels (``load_dataset``)."""

    samples: list[ReIDSample]
    num_classes: int

    @classmethod
    def of(cls, cfg: TrainConfig) -> "TrainingSplit":
        """``cfg``'s training split, refusing one too small for the batches asked for on every worker."""
        samples = load_dataset(cfg.dataset, cfg.data_root, "train")
        identities = len({sample.pid for sample in samples})
        workers = max(1, cfg.workers)
        if identities < 2 or identities < min(cfg.identities_per_batch, identities) * workers:
            raise TrainConfigError(
                f"{identities} training identities cannot fill one batch of {cfg.identities_per_batch} identities on "
                f"each of {workers} worker(s): lower identities_per_batch or workers"
            )
        return cls(samples, identities)

    def load(self, parts: KPRConfig) -> tuple[list[LoadedSample], list[int]]:
        """The training crops in memory, part masks grouped into ``parts``' K parts, and their identity labels."""
        loaded = load_samples(self.samples, parts)
        return loaded, [sample.pid for sample in loaded]
