"""Parity with the official KPR code: the same crops, weights and distances through both, side by side.

Builds the official model from a checkout of the official repository (``--official-repo``; its
Python requirements in ``--official-deps`` when they are not in the project's venv) under the
SOLIDER Swin-B Occluded-Duke test configuration (384x128), and the project's model from the
official weights through the project's importer, then compares on the CPU:

- ``embedding_cosine_min`` / ``embedding_max_abs_diff``: ``KPREncoder.embed`` against the official
  ``KPRFeatureExtractor`` end to end (resize, prompts, network, test embeddings), on the real crops
  of the shared data folder's reid/one_by_one_crops with fixed synthetic skeletons as keypoint
  prompts (one negative skeleton on every other crop, one keypoint in the crop's last pixel column);
  ``visibility_mismatches`` counts part visibilities that differ;
- ``distance_max_abs_diff``: ``kpr_model.distance.part_distance`` against the official
  ``compute_distance_matrix_using_bp_features`` on the same (official) embeddings;
- ``metrics_max_abs_diff``: ``training.evaluation.evaluate`` against torchreid's ``evaluate_rank``
  (``eval_market1501``) on the same distance matrix and labels (mAP and the CMC curve), for the
  real crops and for a larger seeded random gallery;
- ``rerank_max_abs_diff``: ``k_reciprocal_rerank`` against torchreid's ``re_ranking`` on both;
- ``checkpoint_formats``: files written from official models with seeded random weights (a
  torchreid checkpoint with its config, optimizer and scheduler; a bare state dict; a
  ``module.``-prefixed one; a model with the Occluded-Duke camera embedding, compared with camera
  ids against the official test engine's call; one with SOLIDER's semantic layers at weight 0.2),
  each imported by ``write_official_model`` (what ``kpr import-official`` runs) and embedded.

Random weights (seeded) have every constant-initialised tensor (norm weights and biases, zero
biases, BN statistics) perturbed, so that each of them counts; ``--checkpoint FILE`` compares a
real official file instead (the formats still use random weights). Writes
bench/results/official_parity.json. From the repository root:
``.venv/bin/python -m bench.official_parity --official-repo PATH [--official-deps DIR]``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from bench.results_io import RESULTS, write_or_fail
from bench.shared_data import add_shared_option
from kpr_model.config import KPRConfig
from kpr_model.distance import k_reciprocal_rerank, part_distance
from kpr_model.encoder import KPREncoder, prepare_crops
from kpr_model.official_import import official_prompt_order, write_official_model
from training.evaluation import GroundTruth, evaluate

TEST_CONFIG = "configs/kpr/solider/kpr_occ_duke_test.yaml"
EXTRACTOR = "torchreid/tools/feature_extractor.py"
CROPS = "reid/one_by_one_crops"
DATASET_CAMERAS = 8
SEMANTIC_WEIGHT = 0.2
Stack = tuple[np.ndarray, np.ndarray]
"""Test embeddings [N, P, D] and their visibility [N, P]."""
# A standing person in crop-relative (x, y) for the 17 COCO keypoints, with varied confidences
# (two at or below the official visibility threshold, so they are not prompted).
SKELETON = np.array([
    [0.50, 0.08, 0.9], [0.54, 0.06, 0.8], [0.46, 0.06, 0.8], [0.58, 0.08, 0.6], [0.42, 0.08, 0.1],
    [0.66, 0.20, 0.9], [0.34, 0.20, 0.9], [0.72, 0.36, 0.7], [0.28, 0.36, 0.7], [0.74, 0.50, 0.5],
    [0.26, 0.50, 0.0], [0.60, 0.52, 0.9], [0.40, 0.52, 0.9], [0.62, 0.72, 0.8], [0.38, 0.72, 0.8],
    [0.62, 0.93, 0.7], [0.38, 0.93, 0.7],
])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench.official_parity", description=__doc__.split("\n")[0])
    parser.add_argument("--official-repo", type=Path, default=None,
                        help="a checkout of the official KPR repository "
                             "(VlSomers/keypoint_promptable_reidentification)")
    parser.add_argument("--official-deps", type=Path, default=None,
                        help="a folder holding the official code's Python requirements (pip install --target), "
                             "when they are not in this venv")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an official KPR file to compare (default: seeded random weights)")
    parser.add_argument("--official-config", default=TEST_CONFIG,
                        help=f"the official test config, relative to the checkout (default {TEST_CONFIG}; "
                             "give the one of the checkpoint's dataset)")
    add_shared_option(parser, "reid/one_by_one_crops/")
    parser.add_argument("--crops", type=int, default=18, help="how many of the real crops to embed (default all 18)")
    parser.add_argument("--format-crops", type=int, default=3, help="crops embedded per checkpoint format")
    parser.add_argument("--batch", type=int, default=6, help="crops per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and the random gallery")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--note", default="", help="free text stored in the result")
    parser.add_argument("--output", default=str(RESULTS / "official_parity.json"),
                        help="result file (default bench/results/official_parity.json; '-' prints only)")
    return parser.parse_args(argv)


class ParityError(Exception):
    """A missing or unusable input of the comparison (the official checkout, its requirements, the crops)."""


def official_modules(repo: Path | None, deps: Path | None, config: str = TEST_CONFIG) -> SimpleNamespace:
    """The official functions the comparison calls, imported from ``repo`` (and ``deps``); ParityError when missing."""
    if repo is None:
        raise ParityError("--official-repo PATH is required: a checkout of the official KPR repository "
                          "(VlSomers/keypoint_promptable_reidentification)")
    repo, deps = repo.resolve(), deps.resolve() if deps is not None else None
    if not (repo / EXTRACTOR).is_file():
        raise ParityError(f"--official-repo {repo}: not a checkout of the official KPR repository (no {EXTRACTOR})")
    if not (repo / config).is_file():
        raise ParityError(f"--official-config {config}: no such file in {repo}")
    if deps is not None and not deps.is_dir():
        raise ParityError(f"--official-deps {deps}: no such folder")
    sys.path[:0] = [str(repo)] + ([str(deps)] if deps is not None else [])
    try:
        _allow_dataframe_defaults()
        names = {"builder": "torchreid.scripts.builder", "extractor": "torchreid.tools.feature_extractor",
                 "dataset": "torchreid.data", "tools": "torchreid.utils.tools",
                 "distance": "torchreid.metrics.distance", "rank": "torchreid.metrics.rank",
                 "rerank": "torchreid.utils.rerank", "torchtools": "torchreid.utils.torchtools",
                 "defaults": "torchreid.scripts.default_config"}
        return SimpleNamespace(**{key: importlib.import_module(name) for key, name in names.items()})
    except ImportError as exc:
        raise ParityError(f"the official code needs the Python module {exc.name!r}: install its requirements.txt "
                          "into a folder (pip install --target DIR) and give it as --official-deps") from exc


def _allow_dataframe_defaults() -> None:
    """Let the official dataset module (written for Python 3.10) declare a DataFrame dataclass default.

    Python 3.11 refuses unhashable dataclass defaults; DataFrame gets object's identity hash for this run.
    """
    if sys.version_info >= (3, 11):
        import pandas

        pandas.DataFrame.__hash__ = object.__hash__


@contextlib.contextmanager
def official_loading() -> Iterator[None]:
    """torch.load as the official code expects it (full pickles: its checkpoints hold a yacs config)."""
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous


def official_config(off: SimpleNamespace, config: Path, workdir: Path, weights: Path | None = None,
                    semantic_weight: float | None = None):
    """The official test config file ``config`` on the CPU, loading ``weights`` (none: random)."""
    cfg = off.defaults.get_default_config()
    cfg.merge_from_file(str(config))
    cfg.model.load_weights = str(weights) if weights is not None else ""
    cfg.data.save_dir = str(workdir / "official_logs")
    if semantic_weight is not None:
        cfg.model.solider.semantic_weight = semantic_weight
    with official_loading(), contextlib.redirect_stdout(sys.stderr):
        cfg = off.builder.build_config(config=cfg)
    cfg.use_gpu = False
    return cfg


def official_model(off: SimpleNamespace, cfg, cameras: int = 0, seed: int | None = None) -> torch.nn.Module:
    """The official KPR model of ``cfg`` in eval mode; with ``seed``, random weights with constants perturbed."""
    if seed is not None:
        torch.manual_seed(seed)
    with official_loading(), contextlib.redirect_stdout(sys.stderr):
        model = off.builder.build_model(cfg, num_train_pids=702, cam_num=cameras)
    if seed is not None:
        perturb_constants(model, seed)
    return model.eval()


@torch.no_grad()
def perturb_constants(model: torch.nn.Module, seed: int) -> None:
    """Add seeded noise to every floating tensor that holds one value (ones, zeros, BN statistics)."""
    generator = torch.Generator().manual_seed(seed + 1)
    for tensor in model.state_dict().values():
        if tensor.is_floating_point() and tensor.numel() and bool((tensor == tensor.flatten()[0]).all()):
            noise = torch.rand(tensor.shape, generator=generator) * 0.2 - 0.1
            tensor.add_(noise.abs() if float(tensor.flatten()[0]) > 0 else noise)


def real_crops(shared: Path, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The first ``count`` real crops (RGB uint8) of the shared folder and their person ids."""
    paths = sorted((shared / CROPS).glob("p*_f*.jpg"))[:count]
    if not paths:
        raise ParityError(f"--shared {shared}: no crops in {CROPS}")
    crops = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    return crops, np.array([int(p.name[1:3]) for p in paths])


def skeletons(crops: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each crop's target skeleton (SKELETON scaled to it, the left wrist in its last pixel column) and negatives:
    on every other crop one smaller skeleton in its lower left corner.

    No keypoint lies at x == width: the official extractor refuses one (its dataset loader drops it earlier).
    """
    targets, negatives = [], []
    for index, crop in enumerate(crops):
        height, width = crop.shape[:2]
        target = SKELETON * np.array([width, height, 1.0])
        target[9, 0] = width - 1
        negative = SKELETON * np.array([0.5 * width, 0.5 * height, 1.0]) + np.array([0.0, 0.5 * height, 0.0])
        targets.append(target.astype(np.float32))
        negatives.append(negative[None].astype(np.float32) if index % 2 else np.zeros((0, 17, 3), np.float32))
    return targets, negatives


def official_extractor(off: SimpleNamespace, cfg, model: torch.nn.Module):
    """The official feature extractor around ``model`` with the config's input size and normalisation."""
    with contextlib.redirect_stdout(sys.stderr):
        return off.extractor.KPRFeatureExtractor(cfg, image_size=(cfg.data.height, cfg.data.width),
                                                 pixel_mean=cfg.data.norm_mean, pixel_std=cfg.data.norm_std,
                                                 verbose=False, model=model)


def official_embed(off: SimpleNamespace, extractor, crops: list[np.ndarray], targets: list[np.ndarray],
                   negatives: list[np.ndarray], batch: int, cameras: list[int] | None = None) -> Stack:
    """Official test embeddings [N, 1 + K, D] and visibility [N, 1 + K] of the crops.

    Without ``cameras``: the feature extractor's call. With them: the test engine's, which passes the
    camera ids to the model (the extractor's preprocessing, then ``model(..., cam_label=...)``).
    """
    embeddings, visibility = [], []
    for start in range(0, len(crops), batch):
        window = range(start, min(start + batch, len(crops)))
        samples = [{"image": crops[i], "keypoints_xyc": targets[i], "negative_kps": negatives[i]} for i in window]
        with torch.no_grad():
            if cameras is None:
                _, feats, vis, _ = extractor(samples)
            else:
                feats, vis = _test_engine_embed(off, extractor, samples, [cameras[i] for i in window])
        embeddings.append(feats.numpy())
        visibility.append(vis.numpy())
    return np.concatenate(embeddings), np.concatenate(visibility).astype(np.float32)


def _test_engine_embed(off: SimpleNamespace, extractor, samples: list[dict],
                       cameras: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The official test engine's embeddings of ``samples`` (camera ids passed to the model), normalised."""
    items = [off.dataset.ImageDataset.getitem(
        dict(s), extractor.cfg, extractor.keypoints_to_prompt_masks, extractor.prompt_preprocess,
        extractor.keypoints_to_target_masks, extractor.target_preprocess, extractor.preprocess, load_masks=True)
        for s in samples]
    output = extractor.model(torch.stack([i["image"] for i in items]),
                             prompt_masks=torch.stack([i["prompt_masks"] for i in items]),
                             cam_label=torch.tensor(cameras))
    feats, vis, _, _ = off.tools.extract_test_embeddings(output, extractor.cfg.model.kpr.test_embeddings)
    return torch.nn.functional.normalize(feats, p=2, dim=-1), vis


def compare_inputs(off: SimpleNamespace, extractor, config: KPRConfig, crops: list[np.ndarray],
                   targets: list[np.ndarray], negatives: list[np.ndarray]) -> dict:
    """Network inputs side by side: normalised images and prompts (official channel order), and the crops whose
    prompts differ by more than float round-off."""
    image_diff, prompt_diff = [], []
    for crop, target, negative in zip(crops, targets, negatives):
        images, prompts = prepare_crops([crop], [target], [negative], config)
        item = off.dataset.ImageDataset.getitem(
            {"image": crop, "keypoints_xyc": target, "negative_kps": negative}, extractor.cfg,
            extractor.keypoints_to_prompt_masks, extractor.prompt_preprocess, extractor.keypoints_to_target_masks,
            extractor.target_preprocess, extractor.preprocess, load_masks=True)
        official_order = np.argsort(official_prompt_order(prompts.shape[1]))
        image_diff.append(float((images[0] - item["image"]).abs().max()))
        prompt_diff.append(float((prompts[0][official_order] - item["prompt_masks"]).abs().max()))
    return {"image_max_abs_diff": max(image_diff), "prompt_max_abs_diff": max(prompt_diff),
            "crops_with_prompt_diff": [i for i, d in enumerate(prompt_diff) if d > 1e-5]}


def project_embed(encoder: KPREncoder, crops: list[np.ndarray], targets: list[np.ndarray],
                  negatives: list[np.ndarray], batch: int, cameras: list[int] | None = None) -> Stack:
    """The project's test stack [N, 1 + K, D] and visibility [N, 1 + K] of the crops."""
    return encoder.embed(crops, targets, negatives, batch_size=batch, cameras=cameras).test_stack()


def compare_embeddings(ours: Stack, theirs: Stack) -> dict:
    """Worst cosine and absolute difference over every embedding row, and the visibility disagreements."""
    a, b = ours[0].astype(np.float64), theirs[0].astype(np.float64)
    cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    return {"embedding_cosine_min": float(cosine.min()), "embedding_max_abs_diff": float(np.abs(a - b).max()),
            "visibility_mismatches": int(((ours[1] > 0) != (theirs[1] > 0)).sum())}


def official_distance(off: SimpleNamespace, q: Stack, g: Stack) -> np.ndarray:
    """The official part distance (binary visibility, mean over mutually visible parts)."""
    dist, _ = off.distance.compute_distance_matrix_using_bp_features(
        torch.from_numpy(q[0]), torch.from_numpy(g[0]), torch.from_numpy(q[1] > 0), torch.from_numpy(g[1] > 0),
        "mean", 5000, False, "euclidean", use_logger=False)
    return dist.numpy()


def project_distance(q: Stack, g: Stack) -> np.ndarray:
    """The project's part distance."""
    return part_distance(q[0], q[1], g[0], g[1]).numpy()


def metrics_difference(off: SimpleNamespace, dist: np.ndarray, truth: GroundTruth) -> float:
    """Largest difference of mAP and CMC between the project's evaluation and torchreid's evaluate_rank."""
    ours = evaluate(dist, truth).metrics
    with contextlib.redirect_stdout(sys.stderr):
        theirs = off.rank.evaluate_rank(dist, truth.q_pids, truth.g_pids, truth.q_camids, truth.g_camids,
                                        max_rank=50, use_cython=False)
    ranks = len(theirs["cmc"])
    return max(abs(ours.map - float(theirs["mAP"])), float(np.abs(ours.cmc[:ranks] - theirs["cmc"]).max()))


def rerank_difference(off: SimpleNamespace, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> float:
    """Largest difference between ``k_reciprocal_rerank`` and torchreid's ``re_ranking`` (k1 20, k2 6, lambda 0.3)."""
    theirs = off.rerank.re_ranking(q_g.copy(), q_q.copy(), g_g.copy(), k1=20, k2=6, lambda_value=0.3)
    return float(np.abs(k_reciprocal_rerank(q_g, q_q, g_g) - theirs).max())


def random_gallery(seed: int, queries: int = 40, gallery: int = 200, parts: int = 9,
                   dim: int = 32) -> tuple[Stack, Stack, GroundTruth]:
    """Seeded random part embeddings (some parts invisible), identities and cameras of a Market-style split."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 25, queries + gallery)
    centres = rng.normal(size=(25, parts, dim))
    feats = (centres[ids] + rng.normal(scale=1.2, size=(len(ids), parts, dim))).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
    vis = (rng.random((len(ids), parts)) > 0.3).astype(np.float32)
    vis[:, 0] = 1.0
    cams = rng.integers(0, 6, len(ids))
    q, g = slice(0, queries), slice(queries, None)
    truth = GroundTruth(ids[q], ids[g], cams[q], cams[g])
    return (feats[q], vis[q]), (feats[g], vis[g]), truth


def retrieval_checks(off: SimpleNamespace, official: Stack, people: np.ndarray, seed: int) -> dict:
    """Distance, metrics and re-ranking differences on the real crops' official embeddings and a random gallery."""
    first = np.array([i == 0 or people[i] != people[i - 1] for i in range(len(people))])
    q, g = (official[0][first], official[1][first]), (official[0][~first], official[1][~first])
    cams = np.arange(len(people)) % 2
    real_truth = GroundTruth(people[first], people[~first], np.zeros(first.sum(), int), cams[~first])
    cases = [(q, g, real_truth), random_gallery(seed)]
    distance_diff, metrics_diff, rerank_diff = [], [], []
    for query, gallery, truth in cases:
        q_g = project_distance(query, gallery)
        distance_diff.append(float(np.abs(q_g - official_distance(off, query, gallery)).max()))
        metrics_diff.append(metrics_difference(off, q_g, truth))
        q_q, g_g = project_distance(query, query), project_distance(gallery, gallery)
        rerank_diff.append(rerank_difference(off, q_g, q_q, g_g))
    return {"distance_max_abs_diff": max(distance_diff), "metrics_max_abs_diff": max(metrics_diff),
            "rerank_max_abs_diff": max(rerank_diff),
            "retrieval_cases": [{"queries": len(c[2].q_pids), "gallery": len(c[2].g_pids)} for c in cases]}


def write_format(kind: str, off: SimpleNamespace, model: torch.nn.Module, cfg, path: Path) -> None:
    """Write ``model``'s weights to ``path`` as the checkpoint format ``kind``."""
    state = model.state_dict()
    if kind == "state_dict":
        torch.save(state, path)
    elif kind == "module_prefixed":
        torch.save(torch.nn.DataParallel(model).state_dict(), path)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40)
        with contextlib.redirect_stdout(sys.stderr):
            off.torchtools.save_checkpoint(
                {"state_dict": state, "epoch": 120, "rank1": np.float64(0.75), "mAP": np.float64(0.6),
                 "ssmd": np.float64(0.1), "config": cfg, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict()}, str(path.parent), job_id=kind)
        next(path.parent.glob(f"job-{kind}_*_model.pth.tar")).rename(path)


def check_format(kind: str, off: SimpleNamespace, model: torch.nn.Module, cfg, sample: tuple, workdir: Path,
                 batch: int, semantic_weight: float | None = None, cameras: list[int] | None = None) -> dict:
    """Write one format, import it as ``kpr import-official`` does, and compare embeddings with the official model."""
    crops, targets, negatives = sample
    folder = workdir / kind
    folder.mkdir()
    path = folder / f"{kind}.pth.tar"
    write_format(kind, off, model, cfg, path)
    try:
        write_official_model(path, folder / "imported", semantic_weight=semantic_weight)
        encoder = KPREncoder.from_checkpoint(folder / "imported")
    except Exception as exc:  # noqa: BLE001 - the figure records why a format fails to import
        return {"status": f"import failed: {exc}"}
    finally:
        path.unlink()
    extractor = official_extractor(off, cfg, model)
    figures = compare_embeddings(project_embed(encoder, crops, targets, negatives, batch, cameras),
                                 official_embed(off, extractor, crops, targets, negatives, batch, cameras))
    if cameras is not None:
        figures["without_cameras"] = compare_embeddings(
            project_embed(encoder, crops, targets, negatives, batch),
            official_embed(off, extractor, crops, targets, negatives, batch))
    worst = min(figures["embedding_cosine_min"], figures.get("without_cameras", figures)["embedding_cosine_min"])
    return {"status": "ok" if worst >= 0.99999 else f"embeddings differ (cosine {worst:.6f})", **figures}


def checkpoint_formats(off: SimpleNamespace, config: Path, workdir: Path, main_model: torch.nn.Module, main_cfg,
                       sample: tuple, seed: int, batch: int) -> dict:
    """Each official file format written from random weights, imported and embedded ({format: figures})."""
    results = {kind: check_format(kind, off, main_model, main_cfg, sample, workdir, batch)
               for kind in ("torchreid_full", "state_dict", "module_prefixed")}
    cameras = [i % DATASET_CAMERAS for i in range(len(sample[0]))]
    sie = official_model(off, main_cfg, cameras=DATASET_CAMERAS, seed=seed + 2)
    results["with_sie"] = check_format("with_sie", off, sie, main_cfg, sample, workdir, batch, cameras=cameras)
    del sie
    semantic_cfg = official_config(off, config, workdir / "semantic", semantic_weight=SEMANTIC_WEIGHT)
    semantic = official_model(off, semantic_cfg, seed=seed + 3)
    results["with_semantic"] = check_format("with_semantic", off, semantic, semantic_cfg, sample, workdir, batch,
                                            semantic_weight=SEMANTIC_WEIGHT)
    return results


def run(args: argparse.Namespace) -> dict:
    """The whole comparison; the result's figures."""
    off = official_modules(args.official_repo, args.official_deps, args.official_config)
    config = args.official_repo.resolve() / args.official_config
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise ParityError(f"--checkpoint {args.checkpoint}: no such file")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    crops, people = real_crops(args.shared, args.crops)
    targets, negatives = skeletons(crops)
    with tempfile.TemporaryDirectory(prefix="official-parity-") as tmp:
        workdir = Path(tmp)
        cfg = official_config(off, config, workdir / "main", weights=args.checkpoint)
        model = official_model(off, cfg, seed=None if args.checkpoint else args.seed)
        if args.checkpoint is not None:
            write_official_model(args.checkpoint, workdir / "imported")
        else:
            write_format("state_dict", off, model, cfg, workdir / "weights.pth")
            write_official_model(workdir / "weights.pth", workdir / "imported")
        encoder = KPREncoder.from_checkpoint(workdir / "imported")
        extractor = official_extractor(off, cfg, model)
        official = official_embed(off, extractor, crops, targets, negatives, args.batch)
        figures = compare_embeddings(project_embed(encoder, crops, targets, negatives, args.batch), official)
        figures |= compare_inputs(off, extractor, encoder.config, crops, targets, negatives)
        figures |= retrieval_checks(off, official, people, args.seed)
        del encoder
        n = args.format_crops
        formats = checkpoint_formats(off, config, workdir, model, cfg, (crops[:n], targets[:n], negatives[:n]),
                                     args.seed, args.batch)
    return {
        **figures,
        "checkpoint_formats": {kind: f["status"] for kind, f in formats.items()},
        "checkpoint_format_figures": formats,
        "weights": str(args.checkpoint) if args.checkpoint else f"random (seed {args.seed}), constants perturbed",
        "official_config": args.official_config,
        "crops": len(crops),
        "keypoint_prompts": "fixed synthetic skeletons scaled to each crop (bench.official_parity.SKELETON), "
                            "a negative skeleton on every other crop, the left wrist in the last pixel column",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write its JSON to ``--output`` (printed too); 2 with one line when an input is missing."""
    args = parse_args(argv)
    return write_or_fail(args.output, "bench.official_parity", argv, args.note, lambda: run(args), (ParityError,))


if __name__ == "__main__":
    sys.exit(main())
