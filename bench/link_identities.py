"""Linking tracklets into identities on a synthetic site whose people are known: clustering quality and time at scale.

The site is a grid of cameras, each connected to its neighbours with a transit window; each person walks from
camera to camera, never twice past one (a tracklet per passage, a transit drawn from the window between two), at their own time of the
span; a camera's videos are back to back, so a tracklet belongs to the video it starts in. Appearance is the
search benchmark's (bench.search_bench.SyntheticWorld: look-alike groups, per-sighting and per-frame noise, part
occlusions that shift the global vector), aggregated per tracklet as ingestion does. Every method links the same
candidate pairs (each tracklet's nearest neighbours by global vector) with its own threshold, the one of best
pairwise F1 on a tuning site (another seed), and is measured on the test site: pairwise precision, recall and F1
over tracklet pairs and BCubed F1. Then 100k synthetic tracklets are linked with KPR + constraints and timed.
With ``--store DB``: instead, every method on a store ingested from a labelled archive (`kpr synth` + `kpr ingest`,
then `kpr calibrate`), so the tracklets are a real model's output of rendered video and a real tracker's: each
tracklet's person comes from the annotation sidecars, and each method links at the store's calibrated "no close
match" distance (KPR or global cosine), without a camera topology; written under "store", the synthetic figures kept.
See bench/README.md. From the repository root (about 7 minutes on 2 cores; the store mode takes seconds):
    nice -n 10 .venv/bin/python -m bench.link_identities
    .venv/bin/python -m bench.link_identities --store DB
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from bench.results_io import RESULTS, command_line, merge_result
from bench.search_bench import SyntheticWorld, WorldConfig
from pipelines.calibrate import archive_identities, no_close_match_above, tracklet_identities
from pipelines.link import store_tracklets
from pipelines.errors import UserError
from storage import Store, StoreError
from kpr_model.distance import ReIDEmbeddings, aggregate
from workers.link import GLOBAL_DISTANCE, KPR_DISTANCE, LinkSettings, Prior, Topology, Tracklets, link_tracklets

GOAL_F1_GAIN = 0.10
PAST_PEAK = 3
METRICS = ("Pairwise: over all pairs of tracklets, precision = pairs linked that are one person / pairs linked, "
           "recall = pairs of one person linked / pairs of one person, F1 their harmonic mean. BCubed: per tracklet, "
           "precision = share of its identity's tracklets that are its person, recall = share of its person's "
           "tracklets in its identity; F1 of the means. Thresholds: each method's best pairwise F1 on a tuning site "
           "of another seed.")
# What each method turns on: distance, same-video / overlap / transit / direct-move constraints, the topology, and
# the visibility below which a tracklet links to nothing (LinkSettings.min_visibility; KPR distance only).
METHODS = {
    "kpr_constraints": (KPR_DISTANCE, True, True, True, True, True, 0.2),
    "global_only": (GLOBAL_DISTANCE, False, False, False, False, False, 0.0),
    "kpr_only": (KPR_DISTANCE, False, False, False, False, False, 0.0),
    "global_constraints": (GLOBAL_DISTANCE, True, True, True, True, True, 0.0),
    "kpr_no_same_video": (KPR_DISTANCE, False, True, True, True, True, 0.2),
    "kpr_no_overlap": (KPR_DISTANCE, True, False, True, True, True, 0.2),
    "kpr_no_transit": (KPR_DISTANCE, True, True, False, False, True, 0.2),
    "kpr_no_direct_moves": (KPR_DISTANCE, True, True, True, False, True, 0.2),
    "kpr_no_visibility_rule": (KPR_DISTANCE, True, True, True, True, True, 0.0),
    "global_no_direct_moves": (GLOBAL_DISTANCE, True, True, True, False, True, 0.0),
}


@dataclass(frozen=True)
class SiteConfig:
    """The synthetic site: a grid of cameras, people walking across it, and how they look."""

    people: int
    grid: tuple[int, int]
    span_s: float
    video_s: float
    visits: tuple[int, int]
    dwell_s: tuple[float, float]
    fastest_s: tuple[float, float]
    slowest_factor: float
    frames: tuple[int, int]
    lookalike_groups: int
    noise: float  # scales every person's sighting noise (SyntheticWorld.difficulty): 1 is the search benchmark's
    parts: int
    dim: int
    seed: int

    @property
    def cameras(self) -> list[str]:
        """Camera ids, row by row."""
        return [f"cam-{r}-{c}" for r in range(self.grid[0]) for c in range(self.grid[1])]


@dataclass(frozen=True)
class Site:
    """A generated site: its tracklets, the person each one shows, and the cameras' topology."""

    tracklets: Tracklets
    person: np.ndarray
    topology: Topology


def build_site(config: SiteConfig) -> Site:
    """Generate the site of ``config`` (deterministic in its seed)."""
    rng = np.random.default_rng([config.seed, 7])
    cameras = config.cameras
    rows, cols = config.grid
    neighbours: dict[int, list[int]] = {i: [] for i in range(len(cameras))}
    windows = {}
    for r in range(rows):
        for c in range(cols):
            here = r * cols + c
            for there in ([here + 1] if c + 1 < cols else []) + ([here + cols] if r + 1 < rows else []):
                fastest = float(rng.uniform(*config.fastest_s))
                windows[tuple(sorted((cameras[here], cameras[there])))] = (fastest, fastest * config.slowest_factor)
                neighbours[here].append(there)
                neighbours[there].append(here)
    topology = Topology(windows)
    world = SyntheticWorld(WorldConfig(rows=1, parts=config.parts, dim=config.dim, identities=config.people,
                                       lookalike_groups=config.lookalike_groups, cameras=len(cameras), per_video=1,
                                       video_seconds=config.video_s, sample_fps=5.0, thumbnail_bytes=0,
                                       seed=config.seed))
    world.difficulty = world.difficulty * config.noise
    track_ids, video_ids, camera_ids, starts, ends, people, looks = [], [], [], [], [], [], []
    for person in range(config.people):
        camera = int(rng.integers(len(cameras)))
        t = float(rng.uniform(0.0, config.span_s))
        seen = {camera}
        for visit in range(int(rng.integers(config.visits[0], config.visits[1] + 1))):
            if visit:
                unvisited = [c for c in neighbours[camera] if c not in seen]
                if not unvisited:
                    break
                there = int(rng.choice(unvisited))
                low, high = topology.window(cameras[camera], cameras[there])
                t += float(rng.uniform(low, high))
                camera = there
                seen.add(camera)
            dwell = float(rng.uniform(*config.dwell_s))
            video = f"{cameras[camera]}/{int(t // config.video_s)}"
            track_ids.append(f"{video}:p{person}v{visit}")
            video_ids.append(video)
            camera_ids.append(cameras[camera])
            starts.append(t)
            ends.append(t + dwell)
            people.append(person)
            looks.append(aggregate(world.sighting(rng, person, int(rng.integers(config.frames[0],
                                                                                config.frames[1] + 1)))))
            t += dwell
    tracklets = Tracklets(track_ids, video_ids, camera_ids, np.array(starts), np.array(ends),
                          ReIDEmbeddings.concat(looks))
    return Site(tracklets, np.array(people), topology)


def pairwise_scores(truth: np.ndarray, found: np.ndarray) -> dict[str, float]:
    """Pairwise precision, recall and F1 of the clustering ``found`` against the labels ``truth``."""
    def pairs(labels: np.ndarray) -> float:
        counts = np.unique(labels, return_counts=True, axis=0)[1].astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    both = pairs(np.stack([truth, found], axis=1))
    linked, same = pairs(found), pairs(truth)
    precision = both / linked if linked else 1.0
    recall = both / same if same else 1.0
    return {"pairwise_precision": precision, "pairwise_recall": recall, "pairwise_f1": _f1(precision, recall)}


def bcubed_f1(truth: np.ndarray, found: np.ndarray) -> float:
    """BCubed F1: per item, the precision and recall of its cluster against its class; F1 of their means."""
    joint, inverse, counts = np.unique(np.stack([truth, found], axis=1), axis=0, return_inverse=True,
                                       return_counts=True)
    shared = counts[inverse.reshape(-1)].astype(np.float64)
    cluster_size = np.unique(found, return_counts=True, return_inverse=True)
    class_size = np.unique(truth, return_counts=True, return_inverse=True)
    precision = float((shared / cluster_size[2][cluster_size[1]]).mean())
    recall = float((shared / class_size[2][class_size[1]]).mean())
    return _f1(precision, recall)


def _f1(precision: float, recall: float) -> float:
    """Harmonic mean of ``precision`` and ``recall`` (0 when both are 0)."""
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def method_settings(method: str, threshold: float, neighbours: int) -> tuple[LinkSettings, bool]:
    """The link settings of ``method`` at ``threshold`` and whether it knows the cameras' topology."""
    distance, same_video, overlap, transit, direct_moves, topology, visibility = METHODS[method]
    return LinkSettings(threshold, neighbours, distance, same_video, overlap, transit, direct_moves,
                        visibility), topology


def evaluate(site: Site, method: str, threshold: float, neighbours: int) -> dict[str, float]:
    """Link ``site`` with ``method`` at ``threshold``: its scores against the site's people."""
    settings, knows_topology = method_settings(method, threshold, neighbours)
    linking = link_tracklets(site.tracklets, site.topology if knows_topology else None, settings)
    return {**pairwise_scores(site.person, linking.identity), "bcubed_f1": bcubed_f1(site.person, linking.identity),
            "identities": linking.identities}


def best_threshold(site: Site, method: str, grid: Sequence[float], neighbours: int) -> float:
    """The threshold of ``grid`` (ascending) with the best pairwise F1 of ``method`` on ``site`` (the lowest among
    equals); the sweep stops once F1 has fallen for PAST_PEAK thresholds in a row (higher ones only merge more)."""
    best, best_score, falling, last = grid[0], -1.0, 0, -1.0
    for threshold in grid:
        score = evaluate(site, method, threshold, neighbours)["pairwise_f1"]
        if score > best_score:
            best, best_score = threshold, score
        falling = falling + 1 if score < last else 0
        last = score
        if falling >= PAST_PEAK:
            break
    return float(best)


def threshold_grid(distance: str, steps: int) -> np.ndarray:
    """Thresholds tried: KPR part distances and global cosine distances of unit vectors live on different scales."""
    high = 2.0 if distance == KPR_DISTANCE else 1.0
    return np.round(np.linspace(high / steps, high, steps), 4)


def _groups(track_ids: Sequence[str], identity: np.ndarray) -> list[list[str]]:
    """The track ids of each identity of a linking."""
    groups: dict[int, list[str]] = {}
    for track_id, number in zip(track_ids, identity.tolist()):
        groups.setdefault(number, []).append(track_id)
    return list(groups.values())


def link_in_batches(site: Site, settings: LinkSettings, batches: int) -> np.ndarray:
    """Each tracklet's identity when the site is linked as a growing archive is: in ``batches`` by start time, each
    linked incrementally, joining the identities of the batches before or starting new ones."""
    order = np.argsort(site.tracklets.t_start, kind="stable")
    identities: list[list[str]] = []
    bounds = np.linspace(0, len(order), batches + 1).astype(int)
    for start, end in zip(bounds[:-1], bounds[1:]):
        present = np.sort(order[:end])
        new = np.searchsorted(present, order[start:end])
        tracklets = site.tracklets.take(present)
        linking = link_tracklets(tracklets, site.topology, settings, Prior().with_identities(identities), new)
        identities = _groups(tracklets.track_ids, linking.identity)
    return linking.identity


def time_at_scale(config: SiteConfig, count: int, per_person: float, threshold: float, neighbours: int) -> dict:
    """Seconds to link about ``count`` tracklets (``per_person`` tracklets a person, as the smaller sites have) of a
    site grown to that size with KPR + constraints, and to add its latest 1% to the identities of the others
    incrementally."""
    people = int(round(count / per_person))
    scale = people / config.people
    site = build_site(replace(config, people=people, span_s=config.span_s * scale,
                              seed=config.seed + 100))
    settings, _ = method_settings("kpr_constraints", threshold, neighbours)
    started = time.perf_counter()
    linking = link_tracklets(site.tracklets, site.topology, settings)
    seconds = time.perf_counter() - started
    latest = np.argsort(site.tracklets.t_start, kind="stable")[-max(1, len(site.tracklets) // 100):]
    older = np.setdiff1d(np.arange(len(site.tracklets)), latest)
    known = Prior().with_identities(_groups([site.tracklets.track_ids[i] for i in older], linking.identity[older]))
    started = time.perf_counter()
    added = link_tracklets(site.tracklets, site.topology, settings, known, latest)
    incremental = time.perf_counter() - started
    return {"tracklets": len(site.tracklets), "seconds": round(seconds, 1), "identities": linking.identities,
            "candidate_pairs": linking.candidate_pairs,
            "pairwise_f1": round(pairwise_scores(site.person, linking.identity)["pairwise_f1"], 4),
            "incremental": {"new_tracklets": len(latest), "seconds": round(incremental, 1),
                            "candidate_pairs": added.candidate_pairs,
                            "pairwise_f1": round(pairwise_scores(site.person, added.identity)["pairwise_f1"], 4)}}


def store_scores(store: Store, identity_of: Callable[[str], str | None], methods: Sequence[str],
                 neighbours: int) -> dict:
    """Each method on a calibrated ``store`` at its calibrated threshold, against who each detection is
    (``identity_of`` a detection id, e.g. pipelines.calibrate.archive_identities: the annotation sidecars)."""
    person_of = tracklet_identities(store.query_detections(None, ["detection_id", "track_id"]), identity_of)
    tracklets, _ = store_tracklets(store).ordered()
    tracklets = tracklets.take(np.array([i for i, track in enumerate(tracklets.track_ids) if track in person_of],
                                        np.int64))
    people = {name: i for i, name in enumerate(sorted({person_of[track] for track in tracklets.track_ids}))}
    truth = np.array([people[person_of[track]] for track in tracklets.track_ids], np.int64)
    scores = {}
    for method in methods:
        threshold = no_close_match_above(store.model(), global_only=METHODS[method][0] == GLOBAL_DISTANCE)
        if threshold is None:
            raise SystemExit(f"{store.uri}: the store's model is not calibrated: run kpr calibrate --db {store.uri}")
        settings, _ = method_settings(method, threshold, neighbours)
        linking = link_tracklets(tracklets, None, settings)
        found = {**pairwise_scores(truth, linking.identity), "bcubed_f1": bcubed_f1(truth, linking.identity)}
        scores[method] = {key: round(value, 4) for key, value in found.items()} | {
            "identities": linking.identities, "threshold": round(threshold, 4)}
        print(f"{method}: {scores[method]}", file=sys.stderr)
    return {"store": {"methods": scores, "tracklets": len(tracklets), "people": len(people), "topology": None,
                      "thresholds": "the store's calibrated no-close-match distances (kpr calibrate on the same store)",
                      "date": datetime.date.today().isoformat()}}


def run(args: argparse.Namespace) -> dict:
    """The whole benchmark: thresholds tuned on one site, scores on another, then the time at scale."""
    config = SiteConfig(people=args.people, grid=(args.rows, args.cols), span_s=args.span_s, video_s=args.video_s,
                        visits=(2, 7), dwell_s=(5.0, 40.0), fastest_s=(20.0, 90.0), slowest_factor=3.0,
                        frames=(3, 12), lookalike_groups=max(1, args.people // args.lookalike_size), noise=args.noise,
                        parts=args.parts, dim=args.dim, seed=args.seed)
    tuning, test = build_site(config), build_site(replace(config, seed=args.seed + 1))
    print(f"sites: {len(tuning.tracklets)} / {len(test.tracklets)} tracklets of {config.people} people, "
          f"{len(config.cameras)} cameras", file=sys.stderr)
    methods = {}
    for method in args.methods:
        threshold = best_threshold(tuning, method, threshold_grid(METHODS[method][0], args.steps), args.neighbours)
        scores = evaluate(test, method, threshold, args.neighbours)
        methods[method] = {key: round(value, 4) for key, value in scores.items()} | {"threshold": threshold}
        print(f"{method}: {methods[method]}", file=sys.stderr)
    result = {"methods": methods}
    if "kpr_constraints" in methods and "global_only" in methods:
        gain = methods["kpr_constraints"]["pairwise_f1"] - methods["global_only"]["pairwise_f1"]
        result["pairwise_f1_gain"] = round(gain, 4)
        result["goal_f1_gain"] = GOAL_F1_GAIN
        result["goal_met"] = gain >= GOAL_F1_GAIN
    if "kpr_constraints" in methods and args.batches > 1:
        settings, _ = method_settings("kpr_constraints", methods["kpr_constraints"]["threshold"], args.neighbours)
        found = link_in_batches(test, settings, args.batches)
        result["incremental"] = {"batches": args.batches, "method": "kpr_constraints",
                                 **{key: round(value, 4) for key, value in pairwise_scores(test.person, found).items()},
                                 "bcubed_f1": round(bcubed_f1(test.person, found), 4),
                                 "all_at_once_pairwise_f1": methods["kpr_constraints"]["pairwise_f1"]}
        print(f"incremental: {result['incremental']}", file=sys.stderr)
    if args.scale:
        scale = time_at_scale(config, args.scale, len(test.tracklets) / config.people,
                              methods.get("kpr_constraints", {}).get("threshold", 1.0), args.neighbours)
        result["link_100k_s" if args.scale == 100_000 else f"link_{args.scale}_s"] = scale["seconds"]
        result["scale"] = scale
    return result | {
        "site": {"people": config.people, "cameras": len(config.cameras), "grid": list(config.grid),
                 "tracklets": len(test.tracklets), "span_s": config.span_s, "video_s": config.video_s,
                 "lookalike_groups": config.lookalike_groups, "noise": config.noise, "parts": config.parts, "dim": config.dim,
                 "neighbours": args.neighbours, "seeds": {"tuning": config.seed, "test": config.seed + 1}},
        "metrics": METRICS,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": datetime.date.today().isoformat(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=600)
    parser.add_argument("--rows", type=int, default=3, help="camera grid rows")
    parser.add_argument("--cols", type=int, default=4, help="camera grid columns")
    parser.add_argument("--span-s", type=float, default=3600.0, help="seconds the people arrive over")
    parser.add_argument("--video-s", type=float, default=300.0, help="seconds per video")
    parser.add_argument("--lookalike-size", type=int, default=20, help="people per look-alike group")
    parser.add_argument("--noise", type=float, default=1.0, help="sighting noise, times the search benchmark's")
    parser.add_argument("--parts", type=int, default=8, help="K")
    parser.add_argument("--dim", type=int, default=128, help="D")
    parser.add_argument("--neighbours", type=int, default=15, help="candidate neighbours per tracklet")
    parser.add_argument("--steps", type=int, default=40, help="thresholds tried per method")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--batches", type=int, default=10,
                        help="the test site is also linked as a growing archive, in this many batches by time, each "
                             "incrementally (1: not)")
    parser.add_argument("--scale", type=int, default=100_000, help="tracklets of the timed run (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", metavar="DB", help="measure on this labelled, calibrated store instead (see above)")
    parser.add_argument("--out", default=str(RESULTS / "identities.json"), help="result file ('-': print only)")
    args = parser.parse_args(argv)
    command = command_line("bench.link_identities", argv)
    if args.store:
        try:
            store = Store.open(args.store, create=False)
            result = store_scores(store, archive_identities(store), args.methods, args.neighbours)
        except (UserError, StoreError) as exc:
            print(f"bench.link_identities: error: {exc}", file=sys.stderr)
            return 2
        result["store"]["command"] = command
    else:
        result = run(args) | {"command": command}
    merge_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
