"""The `kpr` command line: ingest an archive, search it, train and run the demo.

Each subcommand parses its arguments and hands over to a flow or a library call; user mistakes
end in one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from pipelines.errors import UserError

EXIT_ERROR = 2
EXIT_PARTIAL = 1


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Every project error type whose message is meant for the user."""
    from kpr_model.config import KPRModelError
    from storage import StoreError
    from training.reid_layout import DatasetError
    from workers.errors import WorkerError

    return (UserError, KPRModelError, StoreError, DatasetError, WorkerError)


def _parse_time(text: str | None) -> float | None:
    """Epoch seconds, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"not a time: {text!r} (use ISO 8601 such as 2026-01-01T08:00:00, or epoch seconds)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _positive(kind: type):
    """An argparse type that accepts only numbers > 0 of ``kind``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _quiet_prefect() -> None:
    """Keep Prefect's console output to warnings, and its telemetry off (it races the ephemeral server's SQLite)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipelines.flows import ingest_archive
    from storage import Store
    from workers.discover import list_video_files

    _, files = list_video_files(args.archive)
    Store.open(args.db)
    _check_checkpoint(args.model)
    print(f"ingesting {len(files)} video file(s) from {args.archive} into {args.db}", file=sys.stderr)
    summary = ingest_archive(str(args.archive), str(args.db), str(args.model), target_fps=args.fps,
                             backend=args.backend, ray_address=args.ray_address, progress=not args.no_progress)
    _print_ingest_summary(summary)
    return EXIT_PARTIAL if summary["videos_failed"] else 0


def _check_checkpoint(path: str) -> None:
    from kpr_model.model_files import model_id_of

    model_id_of(path)


def _print_ingest_summary(summary: dict) -> None:
    if summary["videos_found"] and summary["videos_skipped"] == summary["videos_found"]:
        print(f"nothing new: all {summary['videos_found']} videos are already in the store with this model")
    else:
        print(f"videos: {summary['videos_found']} found, {summary['videos_skipped']} already done, "
              f"{summary['videos_done']} ingested, {summary['videos_failed']} failed")
        print(f"detections written: {summary['detections_written']}  |  {summary['frames_per_s']:.1f} sampled frames/s, "
              f"{summary['detections_per_s']:.1f} detections/s  |  {summary['wall_s']:.1f} s  |  run {summary['run_id']}")
    for uri, reason in summary["failures"]:
        print(f"failed: {reason}" if uri in reason else f"failed: {uri}: {reason}", file=sys.stderr)


def cmd_search(args: argparse.Namespace) -> int:
    from pipelines.html_report import ResultSection, write_results_html
    from storage import PersonSearch, SearchFilters, Store

    store = Store.open(args.db, create=False)
    search = PersonSearch(store)
    filters = SearchFilters(cameras=args.camera or None, t_min=_parse_time(args.since), t_max=_parse_time(args.until))
    if args.keypoints and not args.image:
        raise UserError("--keypoints goes with --image (a stored detection already has its keypoints)")
    if args.detection:
        hits = search.by_detection(args.detection, k=args.k, other_cameras_only=not args.same_camera, filters=filters)
        query_thumb, title = store.get_detection(args.detection)["thumbnail"], f"detection {args.detection}"
    else:
        query, query_thumb = _embed_query_image(args, store)
        hits = search.search(query, k=args.k, filters=filters)
        title = f"image {args.image}"
    _print_hits(hits)
    if args.html:
        page = write_results_html(args.html, f"kpr search: {title}", [ResultSection(title, query_thumb, hits)])
        print(f"wrote {page}", file=sys.stderr)
    return 0


def _embed_query_image(args: argparse.Namespace, store):
    import cv2

    from workers.crops import thumbnail_jpeg
    from workers.keypoint_files import read_prompt_file

    if not args.model:
        raise UserError("--image needs --model CHECKPOINT (the model the store was built with)")
    from kpr_model.model_files import model_id_of, open_encoder

    model_id, store_models = model_id_of(args.model), {v["model_id"] for v in store.video_rows("done")}
    if store_models and model_id not in store_models:
        raise UserError(f"--model {args.model} is model {model_id}, but the store holds embeddings of {', '.join(sorted(store_models))}")
    pixels = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if pixels is None:
        raise UserError(f"cannot read query image {args.image} (missing, or not an image OpenCV can decode)")
    image = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    positive, negative = read_prompt_file(args.keypoints) if args.keypoints else (None, None)
    encoder = open_encoder(args.model)
    embeddings = encoder.embed([image], [positive], [negative])
    return embeddings, thumbnail_jpeg(image)


def _print_hits(hits) -> None:
    if not hits:
        print("no results (check the filters)")
        return
    print(f"{'rank':>4}  {'distance':>8}  {'camera':<10} {'time (UTC)':<19}  {'frame':>6}  {'track':<18} detection")
    for rank, hit in enumerate(hits, 1):
        when = datetime.fromtimestamp(hit.timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{rank:>4}  {hit.distance:>8.4f}  {hit.camera_id:<10} {when:<19}  {hit.frame_index:>6}  {hit.track_id:<18} {hit.detection_id}")


def cmd_synth(args: argparse.Namespace) -> int:
    from training.synthetic import WorldConfig, export_reid_crops, generate_archive

    config = WorldConfig(seed=args.seed, n_identities=args.identities, n_cameras=args.cameras, duration_s=args.duration)
    videos = generate_archive(args.out, config)
    print(f"wrote {len(videos)} videos with sidecar annotations under {args.out}")
    if args.crops:
        export_reid_crops(args.crops, config)
        print(f"wrote ReID crops (Market-1501 layout) under {args.crops}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.train import TrainConfig, train

    config = TrainConfig(data_root=str(args.data), out=str(args.out), preset=args.preset, epochs=args.epochs,
                         max_minutes=args.max_minutes, seed=args.seed)
    result = train(config)
    print(f"checkpoint {result['checkpoint']} (model_id {result['model_id']}): held-out mAP {result['heldout']['map']:.3f}, "
          f"rank-1 {result['heldout']['rank1']:.3f} after {result['steps']} steps in {result['train_s']:.0f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import DemoConfig, run_demo

    report = run_demo(DemoConfig(out=Path(args.out), train_minutes=args.train_minutes, quick=args.quick))
    return 0 if report["cross_camera_top1"] > report["chance_top1"] else EXIT_PARTIAL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="ingest the videos of an archive folder into a LanceDB store",
                       description="Decode, detect, embed (KPR) and store every new video of ARCHIVE. "
                                   "Runs a Prefect flow (ephemeral local server unless PREFECT_API_URL is set) over Ray "
                                   "(local unless --ray-address / RAY_ADDRESS). Re-runs skip videos already done.")
    p.add_argument("archive", type=Path, help="folder of videos (one sub-folder per camera) or a single video")
    p.add_argument("--db", required=True, help="LanceDB store: a local folder (created if missing) or an object-store URI")
    p.add_argument("--model", required=True, help="KPR model: a checkpoint folder (from `kpr train` or `kpr demo`) or an exported .onnx file")
    p.add_argument("--fps", type=_positive(float), default=5.0, help="frames sampled per second of video (default 5)")
    p.add_argument("--backend", default="annotations", choices=["annotations"],
                   help="where people and keypoints come from (default: sidecar annotation files)")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="find a person in the other cameras of a store",
                       description="Top-k detections of other cameras: ANN on the global embedding, then exact "
                                   "visibility-weighted KPR part-distance re-ranking.")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--detection", help="query with a stored detection id")
    query.add_argument("--image", type=Path, help="query with an image crop of the person")
    p.add_argument("--keypoints", type=Path, help="JSON keypoint prompt for --image (17 COCO [x, y, conf] in crop pixels; "
                                                  "optional negative_keypoints for occluding people)")
    p.add_argument("--model", help="KPR checkpoint folder or .onnx file, needed with --image")
    p.add_argument("--db", required=True, help="LanceDB store written by `kpr ingest`")
    p.add_argument("-k", "--k", type=_positive(int), default=10, help="number of results (default 10)")
    p.add_argument("--camera", action="append", help="only these cameras (repeatable)")
    p.add_argument("--since", help="only detections at or after this time (ISO 8601 or epoch seconds, UTC)")
    p.add_argument("--until", help="only detections at or before this time")
    p.add_argument("--same-camera", action="store_true", help="with --detection, also search the query's own camera")
    p.add_argument("--html", type=Path, help="also write a self-contained HTML page of the results with thumbnails")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("synth", help="render a synthetic multi-camera archive (videos + sidecar annotations)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--identities", type=int, default=16)
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of video per camera")
    p.add_argument("--crops", type=Path, help="also export ReID crops in the Market-1501 layout to this folder")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a KPR model on a ReID crops folder (Market-1501 layout)")
    p.add_argument("--data", type=Path, required=True, help="dataset root (bounding_box_train/, query/, bounding_box_test/, ...)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--preset", default="demo", choices=["tiny", "demo"], help="model size preset (default demo)")
    p.add_argument("--epochs", type=_positive(int), default=30)
    p.add_argument("--max-minutes", type=_positive(float), default=None, help="stop after this many minutes of training")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="synthetic archive -> train KPR -> ingest -> cross-camera search, with a report",
                       description="Generates a synthetic multi-camera archive, trains a small KPR model on held-out "
                                   "synthetic identities, ingests the archive and queries every identity across cameras. "
                                   "Writes demo_report.json and demo_report.html into --out.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--train-minutes", type=_positive(float), default=8.0,
                   help="cap on training time; training stops early if it is reached (default 8)")
    p.add_argument("--quick", action="store_true", help="a much smaller world and training, for smoke tests")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kpr` console script."""
    args = build_parser().parse_args(argv)
    _quiet_prefect()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("kpr: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_error_types()):
            print(f"kpr {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
