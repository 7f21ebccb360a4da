"""Synthetic occluded benchmark: KPR with prompts vs without vs global only vs the Intel OMZ models.

One command renders a synthetic multi-camera world with strong occlusion and crowded, multi-person
boxes, exports Market-1501-style crops with training identities disjoint from the test identities,
makes every query the most occluded crop of its (identity, camera), trains KPR with `kpr train`
(demo preset, time-capped), scores it with `kpr bench` in its three modes plus both Open Model Zoo
ReID models, and ranks the 18 real crops of the shared data folder (``--shared``, leave-one-out).
Writes bench/results/synthetic_benchmark.json + .md and bench/results/real_crops_ranking.json. From
the repository root: ``.venv/bin/python -m bench.synthetic_benchmark``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.results_io import RESULTS, command_line, write_result
from bench.shared_data import add_shared_option
from kpr_model.checkpoint_files import read_checkpoint_info
from kpr_model.distance import kpr_distance
from kpr_model.encoder import KPREncoder
from kpr_model.global_onnx import GlobalOnnxEncoder
from training.benchmark import global_distance, leave_one_out, read_crop_list
from training.datasets import ReIDSample, load_dataset
from training.synthetic import CropExport, WorldConfig, export_reid_crops
from training.synthetic.crops import ANNOTATION_NAME, GALLERY_DIR, QUERY_DIR, TRAIN_DIR

ROOT = Path(__file__).resolve().parents[1]
OMZ = {"omz_0248": "person-reidentification-retail-0248.onnx", "omz_0287": "person-reidentification-retail-0287.onnx"}
METHODS = {"kpr_prompt": "prompt", "kpr_no_prompt": "no_prompt", "global_only": "global", "omz_0248": "omz_0248",
           "omz_0287": "omz_0287"}
PAIRS = (("kpr_prompt", "kpr_no_prompt"), ("kpr_prompt", "global_only"), ("kpr_no_prompt", "global_only"),
         ("kpr_prompt", "omz_0248"))
DESCRIPTIONS = {
    "kpr_prompt": "KPR, target keypoints + other people's keypoints as negative prompts, KPR part distance",
    "kpr_no_prompt": "KPR, no keypoints, KPR part distance",
    "global_only": "KPR's holistic (BN-foreground) embedding of the un-prompted pass alone, euclidean",
    "omz_0248": "Intel OMZ person-reidentification-retail-0248 (pretrained on real data), cosine",
    "omz_0287": "Intel OMZ person-reidentification-retail-0287 (pretrained on real data), cosine",
}


def world_config(args: argparse.Namespace) -> WorldConfig:
    """The benchmark's world: many identities, crowded scenes, many static occluders, heavily occluded targets allowed."""
    return WorldConfig(seed=args.seed, n_identities=args.identities, n_cameras=args.cameras, duration_s=args.duration,
                       walkers_per_frame=args.walkers, occluders_per_camera=args.occluders,
                       min_target_visibility=args.min_visibility)


def _files(root: Path, split: str, name: str) -> list[Path]:
    """The image, keypoints file and part mask of crop ``name`` (image stem) in the split folder ``split``."""
    return [root / split / f"{name}.jpg", root / "external_annotation" / ANNOTATION_NAME / split / f"{name}.jpg_keypoints.json",
            root / "masks" / ANNOTATION_NAME / split / f"{name}.npy"]


def _occlusion(sample: ReIDSample) -> tuple[int, int]:
    """Visible target keypoints and number of other people with keypoints in the box."""
    visible = int(np.sum(sample.keypoints[:, 2] > 0)) if sample.keypoints is not None else 0
    return visible, len(sample.negative_keypoints)


def _query_preference(sample: ReIDSample) -> tuple[bool, bool, int]:
    """Sort key, best query first: some keypoint visible (a prompt exists), other people in the box, fewest visible keypoints."""
    visible, others = _occlusion(sample)
    return visible == 0, others == 0, visible


def occluded_queries(root: Path) -> dict:
    """Swap each query for the most occluded multi-person crop of its identity and camera (where there is one).

    The export draws queries at random; occluded ReID benchmarks query with occluded crops, and
    boxes holding other people are where keypoint prompts should matter.
    """
    query, gallery = load_dataset("synthetic", root, "query"), load_dataset("synthetic", root, "gallery")
    before = [_occlusion(s) for s in query]
    swapped = 0
    for sample in query:
        same = [g for g in gallery if (g.pid, g.camid) == (sample.pid, sample.camid)]
        pick = min([sample, *same], key=_query_preference)
        if pick is sample:
            continue
        q_name, g_name = sample.image_path.stem, pick.image_path.stem
        moves = [*zip(_files(root, GALLERY_DIR, g_name), _files(root, QUERY_DIR, g_name)),
                 *zip(_files(root, QUERY_DIR, q_name), _files(root, GALLERY_DIR, q_name))]
        for source, target in moves:
            source.rename(target)
        swapped += 1
    after = [_occlusion(s) for s in load_dataset("synthetic", root, "query")]
    gallery_now = [_occlusion(s) for s in load_dataset("synthetic", root, "gallery")]
    return {"queries_swapped_for_a_more_occluded_crop": swapped,
            "query_visible_keypoints_mean_before": round(float(np.mean([v for v, _ in before])), 2),
            "query_visible_keypoints_mean": round(float(np.mean([v for v, _ in after])), 2),
            "gallery_visible_keypoints_mean": round(float(np.mean([v for v, _ in gallery_now])), 2),
            "query_multi_person_fraction_before": round(float(np.mean([n > 0 for _, n in before])), 3),
            "query_multi_person_fraction": round(float(np.mean([n > 0 for _, n in after])), 3),
            "gallery_multi_person_fraction": round(float(np.mean([n > 0 for _, n in gallery_now])), 3)}


def kpr(args: argparse.Namespace, *command: str) -> float:
    """Run a `kpr` command in a subprocess (torch threads = --threads), output to this log; its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"$ kpr {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *command], cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"`kpr {command[0]}` failed with exit status {done.returncode}")
    return round(time.perf_counter() - started, 1)


def rank_real_crops(model: Path, models_dir: Path, csv_path: Path) -> dict:
    """Leave-one-out rank-1 / mAP / mINP over the real crops for KPR (no prompts) and both OMZ models."""
    images, pids = read_crop_list(csv_path)
    kpr_embeddings = KPREncoder.from_checkpoint(model).embed(images)
    distances = {"kpr_no_prompt": kpr_distance(kpr_embeddings, kpr_embeddings)}
    for name, file in OMZ.items():
        vectors = GlobalOnnxEncoder(models_dir / file).vectors(images)
        distances[name] = global_distance(vectors, vectors)
    methods = {}
    for name, matrix in distances.items():
        metrics = leave_one_out(matrix, pids)
        methods[name] = {"map": round(metrics.map, 4), "rank1": round(metrics.rank1, 4), "mINP": round(metrics.mINP, 4),
                         "num_queries": metrics.num_valid_queries}
    return {"crops": len(images), "identities": len(set(pids.tolist())), "source": os.path.relpath(csv_path, ROOT),
            "protocol": "leave-one-out: each crop queries the other 17 (one camera, so no camera rule)",
            "note": "KPR runs without prompts: these real crops have no keypoint annotation. KPR was trained only on "
                    "the synthetic world; the OMZ models were trained on real people.",
            "methods": methods}


def _points(boot: dict) -> str:
    """A bootstrap difference in percentage points with its interval, e.g. "+7.5 (+4.2..+10.9)"."""
    low, high = boot["ci95"]
    return f"{100 * boot['difference']:+.1f} ({100 * low:+.1f}..{100 * high:+.1f})"


def markdown(result: dict, real: dict) -> str:
    """The committed Markdown summary of both results."""
    data = result["dataset"]
    lines = ["# Synthetic occluded benchmark", "",
             f"Test split: {data['num_query']} occluded queries of {data['query_identities']} identities, "
             f"{data['num_gallery']} gallery crops; {data['train_crops']} training crops of {data['train_identities']} "
             "other identities. Market-1501 rule (same identity + same camera ignored).", "",
             "| method | mAP | rank-1 | rank-5 | mINP |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, figures in ((name, result[name]) for name in METHODS):
        lines.append(f"| {name} | {100 * figures['map']:.1f} | {100 * figures['rank1']:.1f} | "
                     f"{100 * figures['rank5']:.1f} | {100 * figures['mINP']:.1f} |")
    chance = result["chance"]
    training = result["training"]
    lines += ["", f"Chance: rank-1 {100 * chance['rank1']:.1f}, mAP about {100 * chance['map']:.1f}. Training: "
              f"{training['steps']} steps ({training['epochs_completed']} epochs) in {training['train_s']:.0f} s on "
              f"{result['device']}.", "", *(f"- {k}: {v}" for k, v in DESCRIPTIONS.items()), "",
              "Paired bootstrap over the queries (5000 resamples), difference in points with its 95% interval:", "",
              "| comparison | mAP | rank-1 |", "| --- | ---: | ---: |",
              *(f"| {pair} | {_points(boot['map'])} | {_points(boot['rank1'])} |"
                for pair, boot in result["paired_bootstrap"].items()), "",
              "## 18 real crops (leave-one-out)", "", real["note"], "",
              "| method | mAP | rank-1 |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {100 * m['map']:.1f} | {100 * m['rank1']:.1f} |" for name, m in real["methods"].items()]
    lines += ["", f"Reproduce: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def paired_bootstrap(first: list, second: list, resamples: int = 5000, seed: int = 0) -> dict:
    """Mean of per-query differences between two methods and its 95% bootstrap interval (queries resampled, paired)."""
    a, b = (np.array([np.nan if v is None else v for v in values], float) for values in (first, second))
    diff = (a - b)[~(np.isnan(a) | np.isnan(b))]
    means = diff[np.random.default_rng(seed).integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    return {"difference": round(float(diff.mean()), 4), "ci95": [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])]}


def synthetic_result(args: argparse.Namespace, bench: dict, export: CropExport, queries: dict, model: Path,
                     train_command: str) -> dict:
    """The committed record: per method figures, chance, dataset sizes and query occlusion, training, commands."""
    dataset = bench["datasets"]["synthetic"]
    _, model_id, metadata = read_checkpoint_info(model)
    training = {k: metadata["training"][k] for k in ("steps", "epochs_completed", "train_s", "samples_per_s", "heldout")}
    figures = ("map", "rank1", "rank5", "rank10", "mINP")
    return {
        # Per method at the top level: each method's figures are one key away.
        **{name: {k: round(dataset["methods"][source][k], 4) for k in figures} for name, source in METHODS.items()},
        "descriptions": DESCRIPTIONS,
        "paired_bootstrap": {f"{a} - {b}": {k: paired_bootstrap(dataset["methods"][METHODS[a]][per_query],
                                                               dataset["methods"][METHODS[b]][per_query])
                                           for k, per_query in (("map", "query_ap"), ("rank1", "query_rank1"))}
                             for a, b in PAIRS},
        "chance": {"rank1": round(dataset["methods"]["prompt"]["chance_rank1"], 4),
                   "map": round(dataset["methods"]["prompt"]["chance_map"], 4)},
        "dataset": {**{k: dataset[k] for k in ("num_query", "num_gallery", "query_identities", "gallery_identities",
                                               "queries_with_keypoints")},
                    "train_crops": export.counts[TRAIN_DIR], "train_identities": len(export.train_identities),
                    **queries, "world": world_config(args).to_dict()},
        "training": training | {"model_id": model_id, "preset": "demo", "max_minutes": args.train_minutes},
        "device": f"CPU ({platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s))",
        "train_command": train_command,
        "bench_command": bench["command"],
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command_line("bench.synthetic_benchmark"),
    }


def parse_args() -> argparse.Namespace:
    """The script's options: world, training budget, threads and where the shared data and results are."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/kpr-synthetic-benchmark"),
                        help="scratch folder: crops, checkpoint, the kpr bench report (replaced)")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--identities", type=int, default=120)
    parser.add_argument("--train-fraction", type=float, default=0.6)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of video per camera")
    parser.add_argument("--walkers", type=float, default=8.0, help="people per frame on average (crowding)")
    parser.add_argument("--occluders", type=int, default=5, help="static occluders per camera")
    parser.add_argument("--min-visibility", type=float, default=0.25,
                        help="smallest visible body fraction of a crop's target person")
    parser.add_argument("--epochs", type=int, default=300, help="epochs (the time cap usually ends training first)")
    parser.add_argument("--train-minutes", type=float, default=9.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of training and evaluation")
    add_shared_option(parser, "models/, reid/")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the result files go (default: bench/results)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    models_dir, csv_path = args.shared / "models", args.shared / "reid" / "one_by_one_crops" / "crops.csv"
    missing = [str(p) for p in [*(models_dir / f for f in OMZ.values()), csv_path] if not p.is_file()]
    if missing:
        raise SystemExit(f"shared data missing: {', '.join(missing)} (--shared names the shared data folder)")
    started = time.perf_counter()
    crops, model, report = args.work / "crops", args.work / "model", args.work / "report"
    print(f"rendering the world and exporting crops to {crops}", flush=True)
    export = export_reid_crops(crops, world_config(args), train_fraction=args.train_fraction)
    queries = occluded_queries(crops)
    train_args = ["train", "--data", str(crops), "--out", str(model), "--preset", "demo", "--epochs", str(args.epochs),
                  "--max-minutes", str(args.train_minutes), "--seed", "1"]
    timings = {"train_wall_s": kpr(args, *train_args)}
    timings["bench_wall_s"] = kpr(args, "bench", "--model", str(model), "--data", f"synthetic={crops}", "--out",
                                  str(report), *(x for n, f in OMZ.items() for x in ("--baseline", f"{n}={models_dir / f}")))
    result = synthetic_result(args, json.loads((report / "benchmark.json").read_text()), export, queries, model,
                              shlex.join(["kpr", *train_args]))
    real = rank_real_crops(model, models_dir, csv_path) | {"command": result["command"],
                                                           "model_id": result["training"]["model_id"]}
    result |= timings | {"wall_s": round(time.perf_counter() - started, 1)}
    write_result(args.results / "synthetic_benchmark.json", result, echo=False)
    write_result(args.results / "real_crops_ranking.json", real, echo=False)
    (args.results / "synthetic_benchmark.md").write_text(markdown(result, real))
    print(markdown(result, real))
    print(f"kpr bench report (ranking page, CMC plot): {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
