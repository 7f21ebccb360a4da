"""Relevance feedback with a simulated investigator: mAP and recall@50 after 0, 1 and 2 rounds of feedback.

Two modes, each writing its own part of the result (``--key``; ``--headline`` also makes it the result's top-level
rounds). ``--store DB``: a store ingested from a labelled archive (the
annotation sidecars `kpr synth` and `kpr demo` write beside the videos say who every detection is), so the
embeddings are a real model's output of rendered video; each labelled tracklet queries the other cameras, as
people search is used. Without it: a small store of the search benchmark's synthetic world (bench.search_bench,
written as its --bulk mode writes) that remembers which identity every stored tracklet shows; each query is a fresh
single-frame sighting of a stored identity searched over the whole store. Searches go through
storage.feedback.FeedbackSearch; after each one the investigator marks the top ``--marks`` new people (as kpr search
lists them; or detections) by ground truth (same identity: same person, else not this person) and searches again
with all marks so far; the figures are those of the detection list. See bench/README.md. From the repository root:
    nice -n 10 .venv/bin/python -m bench.feedback --store DB --queries 60 --key rendered_store --headline
    nice -n 10 .venv/bin/python -m bench.feedback --store DIR/store --key demo_store
    nice -n 10 .venv/bin/python -m bench.feedback --variants feedback,single_query,exclude_only
(each about 20 minutes on 2 loaded cores; DB: a `kpr synth --identities 80` archive ingested, bench/README.md)
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.results_io import RESULTS, command_line, merge_result
from bench.search_bench import MODEL_ID, SyntheticWorld, WorldConfig, bulk_build_store, int_list
from kpr_model.distance import ReIDEmbeddings
from kpr_model.feedback import FeedbackWeights
from pipelines.calibrate import archive_identities, tracklet_identities
from pipelines.errors import UserError
from storage import PersonSearch, SearchFilters, SearchHit, Store, StoreError
from storage.feedback import Feedback, FeedbackSearch

METRICS = ("After round r the investigator's list is the detections confirmed so far (in marking order) followed by "
           "the new results, which leave out every marked detection; rejected ones are not in it. AP = sum of "
           "precision@i at the ranks i <= depth holding a relevant row, divided by min(R, depth), R = the store's "
           "relevant rows (synthetic: the rows of the query's identity; store: the detections of the query's "
           "identity on the other cameras); recall_at_50 = relevant rows among the list's first 50 / min(R, 50); "
           "map_new_results ranks the new results alone against the R minus confirmed rows (queries with rows "
           "left). Means over the queries. Ablations: single_query = the marked detections' own embeddings "
           "fused into one query, ranked by it alone (no candidates gathered for the confirmed, no nearest-view "
           "distance); detections = the marked detections' own embeddings instead of their tracklets'; no_gather = no "
           "candidates gathered for each confirmed tracklet; no_nearest_view = ranked by the fused query alone; "
           "no_negative = no move away from the rejected; no_penalty = no rejection penalty; exclude_only = the "
           "query alone with the marked detections left out.")
GOAL_MAP_GAIN = 0.15


class LabelledWorld(SyntheticWorld):
    """The search benchmark's world, remembering the identity of every tracklet it generates (the ground truth)."""

    def __init__(self, config: WorldConfig) -> None:
        super().__init__(config)
        self.track_identity: dict[str, int] = {}
        self.rows_of = Counter()
        self.tracklets_of = Counter()
        self._drawn: list[int] = []

    def sighting(self, rng: np.random.Generator, identity: int, n: int) -> ReIDEmbeddings:
        """As SyntheticWorld.sighting, noting the identity drawn."""
        self._drawn.append(identity)
        return super().sighting(rng, identity, n)

    def video_rows(self, index: int) -> tuple[dict, list[dict], ReIDEmbeddings]:
        """As SyntheticWorld.video_rows, labelling its tracklets (they are drawn in the order they appear)."""
        self._drawn = []
        video, rows, embeddings = super().video_rows(index)
        sizes = Counter(row["track_id"] for row in rows)
        for track_id, identity in zip(sizes, self._drawn, strict=True):
            self.track_identity[track_id] = identity
            self.rows_of[identity] += sizes[track_id]
            self.tracklets_of[identity] += 1
        return video, rows, embeddings


@dataclass(frozen=True)
class Scores:
    """One ranked list's figures against its identity's stored rows."""

    average_precision: float
    recall_at_50: float
    new_average_precision: float


def average_precision(relevant: Sequence[bool], total: int) -> float:
    """AP of a ranked list: sum of precision@i at each relevant rank i, divided by min(total, len(list))."""
    flags = np.asarray(relevant, bool)
    if not total or not len(flags):
        return 0.0
    precision = np.cumsum(flags) / np.arange(1, len(flags) + 1)
    return float(precision[flags].sum() / min(total, len(flags)))


def score(confirmed: Sequence[bool], new: Sequence[bool], total: int, depth: int) -> Scores:
    """The investigator's list (the confirmed hits in marking order, then the new results, cut at ``depth``)
    against ``total`` stored rows of the identity; new_average_precision ranks the new results alone against the
    rows not confirmed yet (NaN when every row is confirmed)."""
    shown = [*confirmed, *new][:depth]
    left = total - len(confirmed)
    return Scores(average_precision(shown, total),
                  sum(shown[:50]) / max(min(total, 50), 1),
                  average_precision(list(new)[:depth], left) if left else float("nan"))


Variant = Callable[[Feedback], FeedbackSearch]
VARIANTS = ("feedback", "single_query", "detections", "no_gather", "no_nearest_view", "no_negative", "no_penalty",
            "exclude_only")


def variants(search: PersonSearch, args: argparse.Namespace) -> dict[str, Variant]:
    """The variants compared (those ``args.variants`` names), each a FeedbackSearch for the marks so far: full
    feedback; the marked detections' own embeddings fused into one query that alone gathers and ranks (the method
    before tracklets, gathering and the nearest view); the marked detections' own embeddings; without gathering;
    without the nearest-view distance; without the move away from the rejected; without the rejection penalty; and
    only leaving the marked detections (and, among people, their tracklets) out."""
    weights = FeedbackWeights(args.negative_weight, args.rejection_weight, args.exemplar_weight)
    single = replace(weights, exemplar=0.0)
    every = {"feedback": lambda marks: FeedbackSearch(search, marks, weights),
             "single_query": lambda marks: FeedbackSearch(search, marks, single, gather=False, whole_tracklets=False),
             "detections": lambda marks: FeedbackSearch(search, marks, weights, whole_tracklets=False),
             "no_gather": lambda marks: FeedbackSearch(search, marks, weights, gather=False),
             "no_nearest_view": lambda marks: FeedbackSearch(search, marks, single),
             "no_negative": lambda marks: FeedbackSearch(search, marks, replace(weights, negative=0.0)),
             "no_penalty": lambda marks: FeedbackSearch(search, marks, replace(weights, rejection=0.0)),
             "exclude_only": lambda marks: FeedbackSearch(search, Feedback(rejected=tuple(marks.marked)),
                                                          FeedbackWeights(0.0, 0.0, 0.0), gather=False)}
    return {name: every[name] for name in args.variants}


@dataclass(frozen=True)
class Query:
    """One query of the simulated investigator: its embedding, the filters it searches with, which hits show its
    person (the ground truth) and how many stored rows are relevant."""

    embedding: ReIDEmbeddings
    filters: SearchFilters
    is_same: Callable[[SearchHit], bool]
    relevant: int


def investigate(variant: Variant, query: Query, args: argparse.Namespace) -> list[Scores]:
    """Scores of the detection list after 0..``args.rounds`` rounds, each marking the top ``args.marks`` new people
    (their closest detections) or detections (``args.mark``) by ground truth."""
    same: list[str] = []
    rejected: list[str] = []
    scores = []
    for round_ in range(args.rounds + 1):
        search = variant(Feedback(tuple(same), tuple(rejected)))
        hits = search.search(query.embedding, args.depth, query.filters)
        scores.append(score([True] * len(same), [query.is_same(h) for h in hits], query.relevant, args.depth))
        if round_ < args.rounds:
            shown = ([p.best for p in search.people(query.embedding, args.marks, query.filters)]
                     if args.mark == "people" else hits[:args.marks])
            for hit in shown:
                (same if query.is_same(hit) else rejected).append(hit.detection_id)
    return scores


def run_variants(search: PersonSearch, queries: Sequence[Query], args: argparse.Namespace, label: str,
                 log) -> dict:
    """Every variant's mean figures per round over ``queries`` and the seconds each took."""
    figures, seconds = {}, {}
    for name, variant in variants(search, args).items():
        tick = time.perf_counter()
        figures[name] = mean_rounds([investigate(variant, query, args) for query in queries])
        seconds[name] = round(time.perf_counter() - tick, 1)
        log(f"{label}, {name}: {figures[name]} ({seconds[name]} s)")
    headline = args.variants[0]
    return {"variant": headline, "rounds": figures[headline],
            "map_gain": round(figures[headline][-1]["map"] - figures[headline][0]["map"], 4),
            "ablations": {name: rounds for name, rounds in figures.items() if name != headline},
            "search_seconds": seconds}


def world_queries(world: LabelledWorld, n: int, min_tracklets: int, seed: int) -> list[Query]:
    """``n`` fresh single-frame sightings of distinct stored identities seen in at least ``min_tracklets`` tracklets,
    each searching the whole store."""
    rng = np.random.default_rng([seed, 3])
    eligible = sorted(i for i, count in world.tracklets_of.items() if count >= min_tracklets)
    if len(eligible) < n:
        raise UserError(f"only {len(eligible)} identities have {min_tracklets}+ tracklets; ask for fewer queries")
    return [Query(world.sighting(rng, int(i), 1), SearchFilters(),
                  lambda hit, identity=int(i): world.track_identity[hit.track_id] == identity,
                  world.rows_of[int(i)])
            for i in rng.choice(eligible, n, replace=False)]


def store_queries(search: PersonSearch, identity_of: Callable[[str], str | None], n: int | None,
                  seed: int) -> list[Query]:
    """Each labelled tracklet of the store with relevant detections on other cameras (or a sample of ``n``) as a
    tracklet query over the other cameras; relevant are the detections of its person (the identity most of its
    labelled detections have) on those cameras, a hit shows the person when its detection is labelled so."""
    rows = search.store.query_detections(None, ["detection_id", "track_id", "camera_id"])
    identities = tracklet_identities(rows, identity_of)
    per_camera = Counter((identity_of(d), c) for d, c in zip(rows["detection_id"].to_pylist(),
                                                             rows["camera_id"].to_pylist()))
    camera_of = dict(zip(rows["track_id"].to_pylist(), rows["camera_id"].to_pylist()))  # one video per tracklet
    relevant = {track: sum(count for (identity, camera), count in per_camera.items()
                           if identity == identities[track] and camera != camera_of[track])
                for track in sorted(identities)}
    tracks = [track for track, count in relevant.items() if count]
    if not tracks:
        raise UserError(f"no labelled tracklet of the store at {search.store.uri} has its person on another camera")
    if n is not None and n < len(tracks):
        tracks = sorted(np.random.default_rng([seed, 3]).choice(tracks, n, replace=False).tolist())
    queries = []
    for track in tracks:
        embedding, filters = search.tracklet_query(track)
        queries.append(Query(embedding, filters, lambda hit, person=identities[track]: identity_of(hit.detection_id)
                             == person, relevant[track]))
    return queries


def mean_rounds(per_query: list[list[Scores]]) -> list[dict]:
    """Mean figures per round over the queries."""
    rounds = []
    for r in range(len(per_query[0])):
        at = [q[r] for q in per_query]
        rounds.append({"map": round(float(np.mean([s.average_precision for s in at])), 4),
                       "recall_at_50": round(float(np.mean([s.recall_at_50 for s in at])), 4),
                       "map_new_results": round(float(np.nanmean([s.new_average_precision for s in at])), 4)})
    return rounds


def variant_list(text: str) -> list[str]:
    """Comma-separated variant names, each one of VARIANTS."""
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"variants are {', '.join(VARIANTS)}; got {text!r}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see bench/README.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path,
                        help="measure on this store, ingested from an archive with annotation sidecars (kpr synth, "
                             "kpr demo), instead of the synthetic worlds; it is only read")
    parser.add_argument("--db", type=Path,
                        help="synthetic: folder for the stores, one per world (default: a temporary folder, removed "
                             "after)")
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--parts", type=int, default=8, help="K")
    parser.add_argument("--dim", type=int, default=128, help="D")
    parser.add_argument("--identities", type=int, default=1500)
    parser.add_argument("--lookalike-groups", type=int_list, default=[1, 75],
                        help="comma-separated, one world each; the first gives the headline rounds (default 1: "
                             "everyone shares one prototype, a crowd dressed alike; 75: the search benchmark's 20 "
                             "identities per group)")
    parser.add_argument("--cameras", type=int, default=20)
    parser.add_argument("--per-video", type=int, default=250)
    parser.add_argument("--queries", type=int,
                        help="synthetic: query identities (default 60); --store: a sample of the labelled tracklets "
                             "(default all)")
    parser.add_argument("--min-tracklets", type=int, default=2, help="query identities have at least this many")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--marks", type=int, default=10, help="top new results the investigator marks per round")
    parser.add_argument("--mark", choices=("people", "detections"), default="people",
                        help="which results the investigator marks: the top people (kpr search's default list, each "
                             "marked by its closest detection) or the top detections")
    parser.add_argument("--depth", type=int, default=100, help="results per search, and the depth of AP")
    parser.add_argument("--rejection-weight", type=float, default=FeedbackWeights.rejection)
    parser.add_argument("--negative-weight", type=float, default=FeedbackWeights.negative)
    parser.add_argument("--exemplar-weight", type=float, default=FeedbackWeights.exemplar)
    parser.add_argument("--variants", type=variant_list, default=list(VARIANTS),
                        help="comma-separated variants to run, the first giving the run's rounds (default "
                             f"{','.join(VARIANTS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key",
                        help="the result JSON's key for this run's figures (default: store with --store, else "
                             "synthetic)")
    parser.add_argument("--headline", action="store_true",
                        help="also make this run's rounds the result's headline: its top-level rounds and map_gain")
    parser.add_argument("--note", default="")
    parser.add_argument("--output", default=RESULTS / "feedback.json",
                        help="result JSON, of which the run replaces its --key's part ('-': print only)")
    return parser.parse_args(argv)


def investigator_setup(args: argparse.Namespace) -> dict:
    """The simulated investigator's settings, as recorded with either mode's figures."""
    return {"rounds": args.rounds, "marks_per_round": args.marks, "marked_results": args.mark, "depth": args.depth,
            "rejection_weight": args.rejection_weight, "negative_weight": args.negative_weight,
            "exemplar_weight": args.exemplar_weight, "seed": args.seed}


def measure_world(args: argparse.Namespace, groups: int, folder: Path, log) -> dict:
    """Build one world's store in ``folder`` and run the simulated investigator with every variant over it."""
    config = WorldConfig(args.rows, args.parts, args.dim, args.identities, groups, args.cameras, args.per_video,
                         video_seconds=600.0, sample_fps=5.0, thumbnail_bytes=100, seed=args.seed)
    world = LabelledWorld(config)
    store = Store.open(folder)
    if store.count_detections():
        raise UserError(f"{folder} already holds detections; give a new --db folder")
    log(f"writing {args.rows} rows in {config.videos} videos to {folder}")
    build = bulk_build_store(store, world, 50, log)
    store.set_model({"model_id": MODEL_ID, "kind": "kpr", "num_parts": args.parts, "dim": args.dim})
    queries = world_queries(world, args.queries or 60, args.min_tracklets, args.seed)
    figures = run_variants(PersonSearch(store), queries, args, f"{groups} look-alike group(s)", log)
    rows_of = [query.relevant for query in queries]
    return {"lookalike_groups": groups, **figures, "identity_rows_mean": round(float(np.mean(rows_of)), 1),
            "identity_rows_min": min(rows_of), "store_build_s": build["seconds"]}


def measure_synthetic(args: argparse.Namespace, log) -> dict:
    """The synthetic worlds' figures, the first world's as the headline."""
    folder = args.db or Path(tempfile.mkdtemp(prefix="kpr_feedback_bench_"))
    try:
        worlds = [measure_world(args, groups, folder / f"groups_{groups}", log) for groups in args.lookalike_groups]
    finally:
        if args.db is None:
            shutil.rmtree(folder, ignore_errors=True)
    return {"rounds": worlds[0]["rounds"], "map_gain": worlds[0]["map_gain"], "worlds": worlds,
            "setup": {"rows": args.rows, "parts": args.parts, "dim": args.dim, "identities": args.identities,
                      "cameras": args.cameras, "queries": args.queries or 60,
                      "query": "a fresh single-frame sighting of a stored identity with at least min_tracklets "
                               "stored tracklets, unfiltered search of the whole store (no ANN index: exact "
                               "candidates)",
                      "min_tracklets": args.min_tracklets, **investigator_setup(args)}}


def measure_store(store: Store, identity_of: Callable[[str], str | None], args: argparse.Namespace, log) -> dict:
    """The simulated investigator with every variant over a labelled store, its tracklets querying the other
    cameras (``identity_of``: who a detection is, None: not labelled)."""
    search = PersonSearch(store)
    queries = store_queries(search, identity_of, args.queries, args.seed)
    log(f"{len(queries)} labelled tracklets query {store.count_detections()} detections")
    figures = run_variants(search, queries, args, "store", log)
    relevant = [query.relevant for query in queries]
    return {**figures,
            "queries": len(queries), "relevant_rows_mean": round(float(np.mean(relevant)), 1),
            "relevant_rows_min": min(relevant),
            "setup": {"store": store.uri, "detections": store.count_detections(), "model": store.model(),
                      "query": "each labelled tracklet (its aggregated embedding; the person most of its labelled "
                               "detections are) with detections of its person on another camera, searching the "
                               "other cameras (kpr search --tracklet); a hit is the same person when its detection "
                               "is labelled so",
                      **investigator_setup(args)}}


def main(argv: list[str] | None = None) -> int:
    """Run the simulated investigator in the mode asked for and write its figures into the result JSON."""
    args = parse_args(argv)
    log = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.store is not None:
            store = Store.open(args.store, create=False)
            mode, figures = "store", measure_store(store, archive_identities(store), args, log)
        else:
            mode, figures = "synthetic", measure_synthetic(args, log)
    except (UserError, StoreError) as exc:
        print(f"bench.feedback: error: {exc}", file=sys.stderr)
        return 2
    key = args.key or mode
    headline = {"headline": key, "rounds": figures["rounds"], "map_gain": figures["map_gain"]} if args.headline else {}
    merge_result(args.output, {
        "goal_map_gain_after_2_rounds": GOAL_MAP_GAIN, "metrics": METRICS, **headline,
        key: {**figures, "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": command_line("bench.feedback", argv), "note": args.note}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
