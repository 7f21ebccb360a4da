"""Real cross-camera tests: does a model find the same real person in another camera, per method?

Built from the shared data folder (``--shared``); every method (``--method NAME=MODEL``: a KPR
checkpoint folder, an exported KPR .onnx or a global ReID .onnx; by default also OMZ 0248 and 0287
of the folder's models/) is run on the same tests:

- ``intel_derived``: the Intel video (camera ``intel``) and a second camera derived from it
  (``intel_derived``: another viewpoint-like perspective, mirrored, 3/4 resolution, warm cast,
  blur, noise, JPEG recompression, one frame late; bench/derived_camera.py). Both are ingested
  through the product (`kpr ingest --backend yolox` + MoveNet, one store per method, so the
  tracklets are the product's); each tracklet is labelled with the person whose time span (the 18
  hand-checked crops' frames +- ``SPAN_MARGIN``) holds >= 80 % of its detections, else left out as
  junk. Each labelled tracklet with >= ``MIN_QUERY_DETECTIONS`` detections queries the other camera
  (`PersonSearch.by_tracklet`, its hits grouped into tracklets in the order of their best hit), both
  ways; ``top1`` and ``map`` over those queries.
- ``intel_dark``: the same with a night-like camera (dark, low contrast, blue-grey, noisy).
- ``intel_occluded``: the same with a camera that sees everyone through a counter hiding them below
  the waist (the half-hidden person KPR is made for).
- ``intel_derived_meva``: as ``intel_derived`` with every tracklet of the crowded MEVA video
  (camera ``meva``, ingested at ``--meva-fps``) in the gallery as distractors.
- ``crops_18``: the 18 hand-checked crops, each querying derived-camera versions of the other 17
  (same person, other frame: 2 right answers each); embedded directly, with MoveNet keypoints as
  KPR prompts.
- ``mevid_example``: the MEVID example picture: 17 enrolment photos and 22 camera crops of 3
  identities (clothing changes); every image queries all others but its own camera's (the
  enrolment photos share one).

A hybrid model folder (``kpr hybrid``: a KPR checkpoint's parts with a global model's whole-body
vector) is a method like any other, ranked with the holistic weight it records.

``all_invisible_rate`` (KPR methods; global models have no parts and are left out): share of the
stored detections (all cameras; ``all_invisible_rate_by_camera``: per camera) with >= 5 keypoints
of confidence >= 0.3 whose parts all have visibility < 0.5. Writes bench/results/real_cross_camera.json
and a montage of hits (bench/results/real_cross_camera_montage.png). Derived videos and stores are
kept in ``--work`` and reused: a method's store is keyed by its name and model file.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bench.cross_camera_scoring import (
    DISTRACTOR,
    all_invisible_rate,
    label_tracklet,
    ranked_items,
    retrieval_scores,
    summarise,
)
from bench.derived_camera import DARK, DERIVED, OCCLUDED, CameraStyle, derive_crop, write_derived_video
from bench.mevid_example import mevid_crops
from bench.montage import write_montage
from bench.real_video import CROPS, DETECTOR, POSE, VIDEO, ground_truth, person_spans
from bench.results_io import RESULTS, command_line, write_result
from bench.shared_data import add_shared_option
from bench.tracking import MEVA_VIDEO

OMZ_DEFAULTS = {"omz_0248": "models/person-reidentification-retail-0248.onnx",
                "omz_0287": "models/person-reidentification-retail-0287.onnx"}
MIN_QUERY_DETECTIONS = 5
MONTAGE_TEST = "intel_derived_meva"  # the default test of --montage
MONTAGE_TOP = 5

# Cameras of the video tests: the source, and the derived cameras with their style (None: the source itself).
INTEL_CAMERAS: dict[str, CameraStyle | None] = {"intel": None, "intel_derived": DERIVED, "intel_dark": DARK,
                                                 "intel_occluded": OCCLUDED}
# Video tests: (camera A, camera B, distractor cameras in every gallery).
VIDEO_TESTS = {"intel_derived": ("intel", "intel_derived", ()),
               "intel_dark": ("intel", "intel_dark", ()),
               "intel_occluded": ("intel", "intel_occluded", ()),
               "intel_derived_meva": ("intel", "intel_derived", ("meva",))}
CROP_TESTS = ("crops_18", "mevid_example")


@dataclass(frozen=True)
class Method:
    """A named model to test, and the store its ingestion writes."""

    name: str
    model: str
    store: Path
    is_global: bool
    holistic_weight: float = 1.0


@dataclass
class Ranking:
    """One query's ranked gallery tracklets (labels, and thumbnails of the best hits for the montage)."""

    query_track: str
    query_label: int
    query_thumbnail: bytes | None
    labels: list[int | None]
    thumbnails: list[bytes | None]


def store_key(name: str, model: str) -> str:
    """A store folder name for a method: its name and a digest of its model's path and contents, every file of a
    model folder included (a copy of the same file, as the shared folder is laid out again, keeps its stores)."""
    path = Path(model).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha1(str(path).encode())
    for item in files:
        label = item.name if item == path else str(item.relative_to(path))
        digest.update(label.encode() + b"\0" + item.read_bytes())
    return f"{name}-{digest.hexdigest()[:10]}"


def prepare_archive(shared: Path, work: Path) -> tuple[Path, Path]:
    """The Intel archive (source + derived cameras, videos written once) and the MEVA archive, under ``work``."""
    intel, meva = work / "archive_intel", work / "archive_meva"
    source = shared / VIDEO
    for camera, style in INTEL_CAMERAS.items():
        target = intel / camera / (f"{camera}.mp4" if style else source.name)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if style is None:
            target.symlink_to(source.resolve())
        else:
            print(f"writing the derived camera {camera} ...", flush=True)
            write_derived_video(source, target, style)
    link = meva / "meva" / Path(MEVA_VIDEO).name
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((shared / MEVA_VIDEO).resolve())
    return intel, meva


def ingest(archive: Path, method: Method, shared: Path, fps: float) -> None:
    """`kpr ingest` of ``archive`` into the method's store (a separate process; videos already there are skipped)."""
    command = [sys.executable, "-m", "pipelines.cli", "ingest", str(archive), "--db", str(method.store),
               "--model", method.model, "--fps", str(fps), "--backend", "yolox",
               "--detector-model", str(shared / DETECTOR), "--pose-model", str(shared / POSE), "--no-progress"]
    print(f"[{method.name}] ingesting {archive.name} at {fps} fps ...", flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"kpr ingest of {archive} for {method.name} failed")


def ingest_method(method: Method, shared: Path, archives: tuple[Path, Path], fps: float, meva_fps: float) -> None:
    """Both archives into the method's store, once: a marker file names the cameras of a complete store (a store
    made before a camera was added ingests that camera's video; the others are skipped as already stored)."""
    done = method.store / "complete"
    cameras = "\n".join([*INTEL_CAMERAS, "meva", ""])
    if done.exists() and done.read_text() == cameras:
        return
    ingest(archives[0], method, shared, fps)
    ingest(archives[1], method, shared, meva_fps)
    done.write_text(cameras)


class StoreView:
    """What the tests read from one method's store: detections, tracklets with their labels, search."""

    def __init__(self, method: Method, spans: dict[int, tuple[int, int]]) -> None:
        from storage import PersonSearch, Store

        self.store = Store.open(str(method.store), create=False)
        self.search = PersonSearch(self.store)
        self.detections = self.store.query_detections(
            None, ["detection_id", "camera_id", "frame_index", "track_id", "keypoints", "vector", "parts",
                   "visibility", "thumbnail"])
        self.tracklets = {row["track_id"]: row for row in self.store.list_tracklets().to_pylist()}
        self._vectors: dict[str, np.ndarray] | None = None
        frames: dict[str, list[int]] = {}
        for track, camera, frame in zip(self.detections["track_id"].to_pylist(), self.detections["camera_id"].to_pylist(),
                                        self.detections["frame_index"].to_pylist()):
            if track:
                frames.setdefault(track, []).append(frame + offset_of(camera))
        self.labels = {track: DISTRACTOR if self.tracklets[track]["camera_id"] not in INTEL_CAMERAS
                       else label_tracklet(frames.get(track, []), spans) for track in self.tracklets}

    def queries(self, camera: str) -> list[str]:
        """The labelled tracklets of ``camera`` with enough detections to query with."""
        return [t for t, row in self.tracklets.items() if row["camera_id"] == camera
                and row["n_detections"] >= MIN_QUERY_DETECTIONS and self.labels[t] not in (None, DISTRACTOR)]

    def gallery_size(self, cameras: tuple[str, ...]) -> int:
        """Detections stored for ``cameras``."""
        return sum(camera in cameras for camera in self.detections["camera_id"].to_pylist())

    def rank(self, track: str, cameras: tuple[str, ...]) -> Ranking:
        """The product's search for one query tracklet over ``cameras``, as ranked tracklets."""
        from storage import SearchFilters

        size = self.gallery_size(cameras)
        hits = self.search.by_tracklet(track, k=size, candidates=size, filters=SearchFilters(cameras=list(cameras)))
        if len(hits) != size:
            raise RuntimeError(f"search ranked {len(hits)} of the {size} detections of {', '.join(cameras)}: "
                               "the scores would be of a partial ranking")
        return self.ranking(track, [hit.track_id for hit in hits], [hit.thumbnail for hit in hits])

    def ranking(self, track: str, hit_tracks: list[str | None], hit_thumbnails: list[bytes | None]) -> Ranking:
        """A query tracklet's Ranking from its ranked detection hits (their tracklets and thumbnails)."""
        best: dict[str, bytes | None] = {}
        for hit_track, thumbnail in zip(hit_tracks, hit_thumbnails):
            if hit_track:
                best.setdefault(hit_track, thumbnail)
        order = ranked_items(hit_tracks)
        return Ranking(track, self.labels[track], self.tracklets[track]["thumbnail"],
                       [self.labels.get(t) for t in order], [best[t] for t in order])

    def vectors_by_id(self) -> dict[str, np.ndarray]:
        """Each stored detection's global vector by detection id."""
        if self._vectors is None:
            from storage import global_vectors

            self._vectors = dict(zip(self.detections["detection_id"].to_pylist(), global_vectors(self.detections)))
        return self._vectors

    def invisible_rates(self) -> tuple[float | None, dict[str, float | None]]:
        """all_invisible_rate over every stored detection, and over each camera's."""
        keypoints = np.stack(self.detections["keypoints"].to_numpy(zero_copy_only=False)).reshape(-1, 17, 3)
        visibility = np.stack(self.detections["visibility"].to_numpy(zero_copy_only=False))
        cameras = np.array(self.detections["camera_id"].to_pylist())
        return all_invisible_rate(keypoints, visibility), {
            camera: all_invisible_rate(keypoints[cameras == camera], visibility[cameras == camera])
            for camera in sorted(set(cameras))}


def offset_of(camera: str) -> int:
    """Source frames a camera's video starts late (0 for the source and non-Intel cameras)."""
    style = INTEL_CAMERAS.get(camera)
    return style.frame_offset if style else 0


def video_test(rank, view: StoreView, test: str) -> list[Ranking]:
    """Every query of one video test, both ways, ranked by ``rank(view, track, gallery cameras)``."""
    a, b, distractors = VIDEO_TESTS[test]
    return [rank(view, track, (other, *distractors)) for camera, other in ((a, b), (b, a))
            for track in view.queries(camera)]


def crop_sets(shared: Path) -> dict[str, tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]]:
    """Per crop test: query images, gallery images, their labels as [Q] and [G], and a [Q, G] junk mask."""
    truth = ground_truth(shared)
    folder = (shared / CROPS).parent
    with open(shared / CROPS, newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    originals = [cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB) for name in files]
    rng = np.random.default_rng(0)
    width = int(cv2.VideoCapture(str(shared / VIDEO)).get(cv2.CAP_PROP_FRAME_WIDTH))
    derived = [derive_crop(crop, DERIVED, width, rng) for crop in originals]
    people = np.array([row["person"] for row in truth])
    images, labels, enrolment = mevid_crops(shared)
    same_camera = np.logical_and.outer(enrolment, enrolment) | np.eye(len(images), dtype=bool)
    return {"crops_18": (originals, derived, people, people, np.eye(len(people), dtype=bool)),
            "mevid_example": (images, images, labels, labels, same_camera)}


def crop_test_scores(distances: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                     junk: np.ndarray) -> dict:
    """top1 / map of a crop test from its [Q, G] distances (junk pairs left out)."""
    scores = []
    for q in range(len(query_labels)):
        order = np.argsort(distances[q], kind="stable")
        scores.append(retrieval_scores(int(query_labels[q]), [None if junk[q, g] else int(gallery_labels[g])
                                                              for g in order]))
    return summarise(scores)


def crop_keypoints(shared: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """MoveNet keypoints of each whole crop (the prompts ingestion would give a YOLOX box)."""
    from workers.movenet import MoveNet

    pose = MoveNet(shared / POSE, num_threads=1)
    return [pose.estimate(image, np.array([0, 0, image.shape[1], image.shape[0]], np.float32)) for image in images]


def crop_tests(methods: list[Method], shared: Path) -> dict[str, dict[str, dict]]:
    """Every crop test's scores per method: crops embedded directly, KPR distance (global: euclidean of unit vectors)."""
    from kpr_model.distance import kpr_distance
    from kpr_model.model_files import open_encoder

    results: dict[str, dict[str, dict]] = {}
    for test, (queries, gallery, query_labels, gallery_labels, junk) in crop_sets(shared).items():
        prompts = crop_keypoints(shared, queries + gallery)
        distances = {}
        for method in methods:
            encoder = open_encoder(method.model)
            q = encoder.embed(queries, prompts[:len(queries)])
            g = encoder.embed(gallery, prompts[len(queries):])
            distances[method.name] = kpr_distance(q, g, holistic_weight=method.holistic_weight)
        results[test] = {name: crop_test_scores(d, query_labels, gallery_labels, junk) for name, d in distances.items()}
    return results


def video_tests(methods: list[Method], spans: dict[int, tuple[int, int]]
                ) -> tuple[dict[str, dict[str, list[Ranking]]], dict[str, tuple[float | None, dict[str, float | None]]]]:
    """Every video test's rankings per method, and each KPR method's all_invisible_rate (overall, per camera)."""
    views = {method.name: StoreView(method, spans) for method in methods}
    rankings: dict[str, dict[str, list[Ranking]]] = {test: {} for test in VIDEO_TESTS}
    for test in VIDEO_TESTS:
        for method in methods:
            rankings[test][method.name] = video_test(lambda view, track, cameras: view.rank(track, cameras),
                                                     views[method.name], test)
    invisible = {method.name: views[method.name].invisible_rates() for method in methods if not method.is_global}
    return rankings, invisible


def montage_rows(rankings: dict[str, list[Ranking]]) -> dict:
    """Per method: its first query tracklet of each person and the top hits' thumbnails with right/wrong."""
    rows = {}
    for name, ranked in rankings.items():
        chosen = {}
        for ranking in ranked:
            chosen.setdefault(ranking.query_label, ranking)
        rows[name] = [(r.query_thumbnail,
                       [(jpeg, None if label is None else label == r.query_label)
                        for label, jpeg in zip(r.labels, r.thumbnails)])
                      for _, r in sorted(chosen.items())]
    return rows


def parse_methods(args: argparse.Namespace) -> list[Method]:
    """The methods asked for (OMZ defaults first unless ``--only``); ValueError naming a mistake."""
    from kpr_model.config import KPRModelError
    from kpr_model.model_facts import model_facts

    named = {} if args.only else {name: str(args.shared / path) for name, path in OMZ_DEFAULTS.items()}
    for item in args.method:
        name, sep, model = item.partition("=")
        if not sep or not name or not model:
            raise ValueError(f"--method takes NAME=MODEL, got {item!r}")
        named[name] = model
    methods = []
    for name, model in named.items():
        if not Path(model).exists():
            raise ValueError(f"model of method {name} not found: {model}")
        try:
            facts = model_facts(model)
        except KPRModelError as exc:
            raise ValueError(f"method {name}: {exc}") from None
        methods.append(Method(name, model, args.work / "stores" / store_key(name, model), facts.kind == "global",
                              facts.holistic_weight))
    return methods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action="append", default=[], metavar="NAME=MODEL",
                        help="a method to test: KPR checkpoint folder, KPR .onnx export, global ReID .onnx or hybrid "
                             "folder (kpr hybrid) (repeatable)")
    parser.add_argument("--only", action="store_true", help="test only the --method models, not the two OMZ defaults")
    add_shared_option(parser, "video/, reid/, models/")
    parser.add_argument("--fps", type=float, default=5.0, help="frames sampled per second of the Intel cameras")
    parser.add_argument("--meva-fps", type=float, default=2.0, help="frames sampled per second of the MEVA distractor video")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kpr-real-cross-camera",
                        help="folder of the derived videos and the stores, reused between runs")
    parser.add_argument("--output", default=RESULTS / "real_cross_camera.json", help="result JSON ('-': print only)")
    parser.add_argument("--montage", type=Path, default=RESULTS / "real_cross_camera_montage.png",
                        help=f"PNG of a video test's hits: per method, one query per person and its top {MONTAGE_TOP}")
    parser.add_argument("--montage-test", choices=sorted(VIDEO_TESTS), default=MONTAGE_TEST,
                        help="the video test of --montage (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        methods = parse_methods(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    archives = prepare_archive(args.shared, args.work)
    for method in methods:
        ingest_method(method, args.shared, archives, args.fps, args.meva_fps)
    spans = person_spans(ground_truth(args.shared))
    rankings, invisible = video_tests(methods, spans)
    tests = {test: {"methods": {name: summarise([retrieval_scores(r.query_label, r.labels) for r in ranked])
                                for name, ranked in by_method.items()}} for test, by_method in rankings.items()}
    tests.update({test: {"methods": scores} for test, scores in crop_tests(methods, args.shared).items()})
    names = [method.name for method in methods]
    result = {
        "tests": tests,
        "methods": {name: mean_over_tests(tests, name) for name in names},
        "all_invisible_rate": {name: overall for name, (overall, _) in invisible.items()},
        "all_invisible_rate_by_camera": {name: by_camera for name, (_, by_camera) in invisible.items()},
        "models": {method.name: method.model for method in methods},
        "holistic_weights": {method.name: method.holistic_weight for method in methods if method.holistic_weight != 1},
        "fps": args.fps, "meva_fps": args.meva_fps,
        "command": command_line("bench.real_cross_camera", argv),
    }
    write_montage(args.montage, montage_rows(rankings[args.montage_test]), MONTAGE_TOP)
    write_result(args.output, result)
    return 0


def mean_over_tests(tests: dict[str, dict], name: str) -> dict:
    """A method's top1 and map averaged over the tests that scored it."""
    scored = [test["methods"][name] for test in tests.values() if test["methods"][name]["queries"]]
    return {key: round(float(np.mean([s[key] for s in scored])), 3) if scored else None for key in ("top1", "map")}


if __name__ == "__main__":
    raise SystemExit(main())
