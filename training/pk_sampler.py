"""Identity-balanced (PK) batch sampling: P identities x K instances per batch, sharded by rank."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np


class PKSampler:
    """Yields batches of sample indices with ``p`` identities and ``k`` instances each.

    Identities with fewer than ``k`` samples are drawn with replacement. With ``world_size`` > 1 each
    rank takes every world_size-th batch of the same epoch permutation, so PK structure survives
    distribution (a plain distributed sampler would split identities across ranks).
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            self.by_label[int(label)].append(index)
        if len(self.by_label) < 2:
            raise ValueError("PK sampling needs at least 2 identities")
        self.p, self.k = min(p, len(self.by_label)), k
        self.seed, self.rank, self.world_size = seed, rank, world_size

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __len__(self) -> int:
        return (len(self.by_label) // self.p) // self.world_size

    def epoch(self, epoch: int) -> Iterator[list[int]]:
        """The batches of one epoch for this rank (deterministic in seed and epoch)."""
        rng = np.random.default_rng((self.seed, epoch))
        labels = rng.permutation(sorted(self.by_label))
        batches = []
        for start in range(0, len(labels) - self.p + 1, self.p):
            batch = []
            for label in labels[start:start + self.p]:
                pool = self.by_label[int(label)]
                batch.extend(int(i) for i in rng.choice(pool, self.k, replace=len(pool) < self.k))
            batches.append(batch)
        yield from batches[self.rank:len(self) * self.world_size:self.world_size]
