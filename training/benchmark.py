"""Benchmark of a KPR checkpoint on a ReID query/gallery split, in the paper's three modes, plus outside baselines.

Modes: ``prompt`` (the dataset's target keypoints and negative keypoints as prompts, KPR part
distance), ``no_prompt`` (no keypoints, KPR part distance) and ``global`` (the holistic embedding of
the un-prompted pass alone). Any global encoder (crops -> vectors, e.g. ``kpr_model.global_onnx``)
is scored like ``global``. Distances come from ``kpr_model.distance``, metrics from
``training.evaluation`` (the one protocol: the dataset's own same-camera rule, optional re-ranking).
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from kpr_model.config import KPRConfig
from kpr_model.distance import ReIDEmbeddings, kpr_distance, part_distance, per_part_distances
from kpr_model.encoder import KPREncoder, prepare_crops
from kpr_model.keypoints import group_names
from training.datasets import DatasetError, dataset_spec, load_dataset
from training.datasets.common import require_file
from training.evaluation import Evaluation, GroundTruth, RetrievalMetrics, evaluate, evaluate_embeddings
from training.samples import LoadedSample, load_samples

MODES: tuple[str, ...] = ("prompt", "no_prompt", "global")
RERANKED = "+rerank"

GlobalEncoder = Callable[[Sequence[np.ndarray]], np.ndarray]
"""RGB uint8 person crops -> one embedding per crop [N, D] (a global ReID model such as an OMZ model)."""


@dataclass
class SplitData:
    """A dataset's query and gallery crops in memory (and their image files), and whether its protocol ignores
    same-camera matches."""

    name: str
    root: str
    query: list[LoadedSample]
    gallery: list[LoadedSample]
    drop_same_camera: bool
    query_paths: list[Path] = field(default_factory=list)
    gallery_paths: list[Path] = field(default_factory=list)

    @classmethod
    def load(cls, name: str, root: str) -> "SplitData":
        """The query and gallery splits of dataset ``name`` under ``root`` (DatasetError when unusable)."""
        spec = dataset_spec(name)
        query, gallery = (load_dataset(name, root, split) for split in ("query", "gallery"))
        if not query or not gallery:
            raise DatasetError(f"{name} at {root} has an empty query or gallery split")
        return cls(name.lower(), str(root), load_samples(query), load_samples(gallery), spec.drop_same_camera,
                   [s.image_path for s in query], [s.image_path for s in gallery])

    @property
    def truth(self) -> GroundTruth:
        """Identities and cameras of the query and gallery crops, with the dataset's same-camera rule."""
        return GroundTruth(np.array([s.pid for s in self.query]), np.array([s.pid for s in self.gallery]),
                           np.array([s.camid for s in self.query]), np.array([s.camid for s in self.gallery]),
                           self.drop_same_camera)


@dataclass
class MethodResult(Evaluation):
    """One method on one split: its evaluation under the protocol, by name.

    ``embeddings`` (query, gallery) are kept for the KPR part-based modes (the report shows their parts).
    """

    name: str
    embeddings: tuple[ReIDEmbeddings, ReIDEmbeddings] | None = None


@dataclass
class RankingExample:
    """What the ranking page shows for one query of ``mode``: its top-k and their parts.

    ``gallery`` holds the shown gallery indices in rank order; ``part_maps`` [1 + k, K, h, w] and
    ``visibility`` [1 + k, K] are the query's then each shown crop's; ``part_distances`` [k, K] is NaN
    where a part is not visible in both; ``first_match`` is the 1-based rank of the first true match
    under every method (None when the query has no valid match).
    """

    mode: str
    query: int
    gallery: np.ndarray
    distances: np.ndarray
    correct: np.ndarray
    part_maps: np.ndarray
    visibility: np.ndarray
    part_distances: np.ndarray
    first_match: dict[str, int | None]


def leave_one_out(distances: np.ndarray, pids: Sequence[int]) -> RetrievalMetrics:
    """Metrics when each of N crops queries the N - 1 others, from an [N, N] distance matrix.

    Giving each crop its own camera makes the Market-1501 rule drop exactly the query itself.
    """
    pids, own = np.asarray(pids), np.arange(len(pids))
    return evaluate(distances, GroundTruth(pids, pids, own, own)).metrics


def read_crop_list(csv_path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """RGB crops and person ids listed by a CSV with ``file`` and ``person_id`` columns, image files beside it.

    That is the layout of the shared real crops (``reid/one_by_one_crops/crops.csv``); DatasetError when unusable.
    """
    csv_path = require_file(Path(csv_path), "crop list")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "person_id"} <= set(rows[0]):
        raise DatasetError(f"{csv_path}: expected a header with file and person_id and at least one row")
    crops = []
    for row in rows:
        pixels = cv2.imread(str(csv_path.parent / row["file"]), cv2.IMREAD_COLOR)
        if pixels is None:
            raise DatasetError(f"cannot read image {csv_path.parent / row['file']} listed in {csv_path}")
        crops.append(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))
    return crops, np.array([int(row["person_id"]) for row in rows])


def global_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Euclidean distance [Q, G] between one vector per crop: the KPR distance with a single, always visible part.

    On L2-normalised vectors it ranks exactly as cosine similarity does.
    """
    return part_distance(query[:, None].astype(np.float32), np.ones((len(query), 1), np.float32),
                         gallery[:, None].astype(np.float32), np.ones((len(gallery), 1), np.float32)).numpy()


def uses_camera_term(config: KPRConfig, dataset: str) -> bool:
    """Whether a model embeds ``dataset`` with its camera embedding: only on the dataset whose cameras it learned,
    as the official test engine does (elsewhere the camera ids mean other cameras, and the term is left out)."""
    return config.camera_embeddings > 0 and config.camera_dataset == dataset.lower()


def _cameras(encoder: KPREncoder, samples: Sequence[LoadedSample], dataset: str) -> list[int] | None:
    """The samples' camera ids when ``encoder``'s model applies its camera term on ``dataset``, else None."""
    return [s.camid for s in samples] if uses_camera_term(encoder.config, dataset) else None


def _prompts(samples: Sequence[LoadedSample], prompted: bool) -> tuple[list | None, list | None]:
    """Target and negative keypoints of ``samples`` for the encoder, or (None, None) without prompts."""
    if not prompted:
        return None, None
    return [s.keypoints for s in samples], [s.negatives for s in samples]


def kpr_embeddings(encoder: KPREncoder, samples: Sequence[LoadedSample], prompted: bool,
                   dataset: str) -> ReIDEmbeddings:
    """KPR embeddings of ``samples`` of ``dataset``, prompted by their keypoints and negatives or not prompted at all."""
    return encoder.embed([s.image for s in samples], *_prompts(samples, prompted),
                         cameras=_cameras(encoder, samples, dataset))


@torch.inference_mode()
def part_attention_maps(encoder: KPREncoder, samples: Sequence[LoadedSample], prompted: bool,
                        dataset: str) -> np.ndarray:
    """The K part attention maps [N, K, h, w] (softmax probabilities at feature resolution) of each sample."""
    images, prompts = prepare_crops([s.image for s in samples], *_prompts(samples, prompted), encoder.config)
    cameras = _cameras(encoder, samples, dataset)
    camera_ids = None if cameras is None else torch.tensor(cameras, device=encoder.device)
    with torch.no_grad():
        features = encoder.model.eval().forward_features(images.to(encoder.device), prompts.to(encoder.device),
                                                         camera_ids)
    return features.part_maps[:, 1:].float().cpu().numpy()


def _with_rerank(name: str, distance: Callable[[object, object], np.ndarray], query, gallery, data: SplitData,
                 rerank: bool, keep: bool) -> list[MethodResult]:
    """The method evaluated on ``distance``, and also as "<name>+rerank" after k-reciprocal re-ranking when ``rerank``."""
    plain, *reranked = evaluate_embeddings(distance, query, gallery, data.truth, rerank)
    results = [MethodResult(**vars(plain), name=name, embeddings=(query, gallery) if keep else None)]
    return results + [MethodResult(**vars(evaluation), name=name + RERANKED) for evaluation in reranked]


def benchmark_split(data: SplitData, encoder: KPREncoder | None, modes: Sequence[str] = MODES,
                    baselines: Mapping[str, GlobalEncoder] | None = None, rerank: bool = False) -> dict[str, MethodResult]:
    """Every requested KPR mode (needs ``encoder``) and every baseline on ``data``, by method name, in order.

    With ``rerank`` each method also appears as "<name>+rerank" after k-reciprocal re-ranking.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown or (modes and encoder is None):
        raise ValueError(f"modes must be among {MODES} (and need an encoder), got {list(modes)}")
    results: list[MethodResult] = []
    unprompted = None
    for mode in modes:
        if mode == "prompt":
            query, gallery = (kpr_embeddings(encoder, s, True, data.name) for s in (data.query, data.gallery))
            results += _with_rerank(mode, kpr_distance, query, gallery, data, rerank, keep=True)
            continue
        if unprompted is None:
            unprompted = tuple(kpr_embeddings(encoder, s, False, data.name) for s in (data.query, data.gallery))
        if mode == "no_prompt":
            results += _with_rerank(mode, kpr_distance, *unprompted, data, rerank, keep=True)
        else:
            results += _with_rerank(mode, global_distance, *(e.global_emb for e in unprompted), data, rerank, keep=False)
    for name, encode in (baselines or {}).items():
        query, gallery = (encode([s.image for s in samples]) for samples in (data.query, data.gallery))
        results += _with_rerank(name, global_distance, query, gallery, data, rerank, keep=False)
    return {r.name: r for r in results}


def first_match_rank(result: MethodResult, data: SplitData, query: int) -> int | None:
    """1-based rank of the first true match of ``query`` under ``result`` (None when it has none)."""
    truth = data.truth
    hits = np.flatnonzero(truth.g_pids[result.rankings[query]] == truth.q_pids[query])
    return int(hits[0]) + 1 if len(hits) else None


def ranking_examples(data: SplitData, results: Mapping[str, MethodResult], encoder: KPREncoder, mode: str,
                     top_k: int = 10, count: int = 20) -> list[RankingExample]:
    """Up to ``count`` queries spread evenly over the query list, with their top-k under KPR ``mode``."""
    result = results[mode]
    if result.embeddings is None:
        raise ValueError(f"{mode!r} is not a part-based KPR mode; ranking examples need one of prompt, no_prompt")
    query_emb, gallery_emb = result.embeddings
    truth = data.truth
    examples = []
    for i in np.unique(np.linspace(0, len(data.query) - 1, max(1, count)).round().astype(int)):
        shown = result.rankings[i][:top_k]
        maps = part_attention_maps(encoder, [data.query[i], *(data.gallery[j] for j in shown)], mode == "prompt",
                                   data.name)
        examples.append(RankingExample(
            mode, int(i), shown, result.distances[i, shown], truth.g_pids[shown] == truth.q_pids[i], maps,
            np.concatenate([query_emb.visibility[i:i + 1], gallery_emb.visibility[shown]]),
            per_part_distances(query_emb.select([i]), gallery_emb.select(shown)),
            {name: first_match_rank(r, data, int(i)) for name, r in results.items()}))
    return examples


@dataclass
class DatasetBenchmark:
    """Everything a report needs about one dataset: the split, every method's result, ranking examples, part names."""

    data: SplitData
    results: dict[str, MethodResult]
    examples: list[RankingExample]
    part_names: tuple[str, ...]


def run_benchmark(data: SplitData, encoder: KPREncoder, modes: Sequence[str] = MODES,
                  baselines: Mapping[str, GlobalEncoder] | None = None, rerank: bool = False, top_k: int = 10,
                  queries_shown: int = 20) -> DatasetBenchmark:
    """``benchmark_split`` plus ranking examples under the first part-based mode asked for (prompt, no_prompt)."""
    results = benchmark_split(data, encoder, modes, baselines, rerank)
    shown_mode = next((m for m in modes if m != "global"), None)
    examples = (ranking_examples(data, results, encoder, shown_mode, top_k, queries_shown)
                if shown_mode and queries_shown > 0 else [])
    return DatasetBenchmark(data, results, examples, group_names(encoder.config.part_grouping))
