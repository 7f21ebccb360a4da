"""The `kpr` command line: ingest an archive, search it, serve and maintain it, train and run the demo.

Each subcommand parses its arguments and hands over to a flow or a library call; user mistakes
end in one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

from kpr_model.hybrid_files import DEFAULT_HOLISTIC_WEIGHT
from pipelines.errors import UserError, is_user_error
from pipelines.interrupts import EXIT_INTERRUPTED, second_ctrl_c_exits, start_prefect_server
from workers.backends import (BACKENDS, BackendConfig, check_annotation_files, check_device_here,
                              check_model_files)
from workers.cameras import CAMERAS_EXAMPLE
from workers.ingest_options import IngestOptions

EXIT_ERROR = 2
EXIT_PARTIAL = 1
DETECTOR_MODEL_ENV, POSE_MODEL_ENV = "KPR_DETECTOR_MODEL", "KPR_POSE_MODEL"  # the yolox backend's files, if set


def _bounded(kind: type, low: float, high: float, low_inclusive: bool, what: str):
    """An argparse type that accepts numbers of ``kind`` in ``[low, high]`` (``(low, high]`` unless ``low_inclusive``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= low if low_inclusive else value > low) or not value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


def _positive(kind: type):
    """An argparse type that accepts only numbers > 0 of ``kind``."""
    return _bounded(kind, 0, math.inf, False, "> 0")


def _non_negative(kind: type):
    """An argparse type that accepts only numbers >= 0 of ``kind``."""
    return _bounded(kind, 0, math.inf, True, ">= 0")


_fraction = _bounded(float, 0.0, 1.0, True, "between 0 and 1")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit 2, like every other kpr error."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _quiet_prefect() -> None:
    """Keep Prefect's console output to warnings, and its telemetry off (it races the ephemeral server's SQLite)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_ingest(args: argparse.Namespace) -> int:
    from workers.ray_address import check_ray_address

    backend = BackendConfig(*_backend_choice(args), args.openpifpaf_checkpoint,
                            min_score=args.min_score, min_box_height=args.min_box_height)
    options = IngestOptions(target_fps=args.fps, segment_s=args.segment_s, backend=backend, device=args.device,
                            detectors=args.detectors, embedders=args.embedders, batch_frames=args.batch_frames,
                            max_batches_in_flight=args.max_batches_in_flight)
    # Every mistake is one line before Ray or Prefect start and before a new store is made; the cheap checks
    # come before Prefect, LanceDB and PyTorch are even imported, the model and the store before Prefect and Ray.
    check_model_files(backend)
    if args.ray_address or os.environ.get("RAY_ADDRESS"):
        check_ray_address(args.ray_address)
    else:
        check_device_here(options.device)
    from pipelines.ingest_inputs import IngestInputs

    inputs = IngestInputs(str(args.archive), str(args.db), str(args.model), args.model_input, args.replace_model,
                          args.cameras)
    inputs.cameras  # a bad cameras file is one line before the model is read
    inputs.model_facts  # read before the annotation files are checked: a wrong model is one line
    check_annotation_files(backend, inputs.videos.files)
    inputs.open()
    from pipelines.flows import ingest_archive

    print(f"ingesting {len(inputs.videos.files)} video file(s) from {args.archive} into {args.db} "
          f"({backend.name} backend)", file=sys.stderr)
    done_before = len(inputs.store.done_video_ids(inputs.model_id))
    kill_server = start_prefect_server()
    try:
        with second_ctrl_c_exits(b"kpr ingest: interrupted again: stopped at once; re-run to resume\n", kill_server):
            summary = ingest_archive(inputs, options, ray_address=args.ray_address, progress=not args.no_progress)
    except KeyboardInterrupt:
        kill_server()  # what it records is written; a graceful stop takes seconds
        committed = len(inputs.store.done_video_ids(inputs.model_id)) - done_before
        print(f"kpr ingest: interrupted: {committed} video(s) committed by this run, each whole; "
              f"re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_ingest_summary(summary)
    return EXIT_PARTIAL if summary["videos_failed"] else 0


def _backend_choice(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """The backend and its detector and pose files: the flags, else for yolox the files that KPR_DETECTOR_MODEL and
    KPR_POSE_MODEL name; without --backend, yolox when KPR_DETECTOR_MODEL is set, else annotations."""
    detector, pose = os.environ.get(DETECTOR_MODEL_ENV) or None, os.environ.get(POSE_MODEL_ENV) or None
    name = args.backend or ("yolox" if detector else "annotations")
    if name != "yolox":
        return name, args.detector_model, args.pose_model
    return name, args.detector_model or detector, args.pose_model or pose


def _print_ingest_summary(summary: dict) -> None:
    if summary["videos_found"] and summary["videos_skipped"] == summary["videos_found"]:
        print(f"nothing new: all {summary['videos_found']} videos are already in the store with this model")
    else:
        print(f"videos: {summary['videos_found']} found, {summary['videos_skipped']} already done, "
              f"{summary['videos_done']} ingested, {summary['videos_failed']} failed")
        print(f"detections written: {summary['detections_written']} ({summary['detections_dropped']} boxes under "
              f"--min-box-height dropped), tracklets written: {summary['tracklets_written']}  "
              f"|  {summary['frames_per_s']:.1f} sampled frames/s, "
              f"{summary['detections_per_s']:.1f} detections/s  |  {summary['wall_s']:.1f} s  |  run {summary['run_id']}")
    print(f"cameras file: {summary['cameras_file']} ({summary['cameras_named']} cameras)" if summary["cameras_file"]
          else "cameras file: none (video times from sidecars or file times, in UTC)")
    for warning in summary["camera_warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    for uri, reason in summary["failures"]:
        print(f"failed: {reason}" if uri in reason else f"failed: {uri}: {reason}", file=sys.stderr)


def cmd_search(args: argparse.Namespace) -> int:
    from pipelines.query import Query, QuerySearch
    from pipelines.query_image import QueryEncoder
    from pipelines.query_prompt import read_prompt
    from storage import Store

    if args.keypoints and not args.image:
        raise UserError("--keypoints goes with --image (a stored detection already has its keypoints)")
    store = Store.open(args.db, create=False)
    query = Query(detection_id=args.detection, track_id=args.tracklet, identity_id=args.identity, image=args.image,
                  prompt=read_prompt(args.keypoints) if args.keypoints else None,
                  cameras=tuple(args.camera) if args.camera else None, parts=tuple(args.part or ()),
                  since=args.since, until=args.until, min_visibility=args.min_visibility, k=args.k,
                  rerank=args.rerank, same_camera=args.same_camera, global_only=args.global_only,
                  detections=args.detections or args.group, same=tuple(args.same or ()),
                  rejected=tuple(args.rejected or ()))
    encoder = QueryEncoder(args.model, store, args.model_input) if args.image and args.model else None
    missing_model = "--image needs --model CHECKPOINT (the model the store was built with)"
    result = QuerySearch(store, encoder, missing_model).run(query)
    hits, parts, names = result.hits, result.parts, result.part_names
    if result.people is not None:
        _print_people(result)
    elif args.group:
        _print_groups(hits, parts, result.identities)
    else:
        _print_hits(hits, parts, result.no_close_match_above, result.identities)
    if args.html:
        title = (f"detection {args.detection}" if args.detection else f"tracklet {args.tracklet}" if args.tracklet
                 else f"identity {args.identity}" if args.identity else f"image {args.image}")
        if parts:
            title += " (parts: " + ", ".join(names[p] for p in parts) + ")"
        summary = {"results": f"{len(hits)} {'detections' if result.people is None else 'people (tracklets)'}",
                   "parts": ", ".join(names[p] for p in parts) if parts else "whole body",
                   "distance": "cosine of the global vectors" if result.global_only else "KPR part distance",
                   "minimum visibility": args.min_visibility, "k-reciprocal re-ranking": "on" if args.rerank else "off",
                   "no close match above": ("not calibrated (kpr calibrate)" if result.no_close_match_above is None
                                            else f"{result.no_close_match_above:.4f}, the model's calibrated distance")}
        page = _write_page(args.html, title, _query_thumbnail(store, args, result), result, args.group, summary)
        print(f"wrote {page}", file=sys.stderr)
    if args.case is not None:
        from pipelines.cases import record_search

        record_search(args.case, store, query, result)
    return 0


def _query_thumbnail(store, args: argparse.Namespace, result) -> bytes | None:
    """The picture of the query on the results page: the embedded crop, else the stored detection or tracklet's."""
    from workers.crops import thumbnail_jpeg

    if result.crop is not None:
        return thumbnail_jpeg(result.crop)
    if args.detection:
        return store.get_detection(args.detection, ["thumbnail"])["thumbnail"]
    if args.identity:
        from storage.identities import Identities

        return Identities.open(store.uri).get(args.identity)["thumbnail"]
    rows = store.tracklet_detections(args.tracklet)  # the tracklet's first detection
    return rows["thumbnail"][0].as_py() if rows.num_rows else None


def _visibility(hit, parts: list[int] | None) -> str:
    """The hit's mean visibility over ``parts`` as printed, "-" for a global model's hit (it has no parts)."""
    value = hit.mean_visibility(parts)
    return "-" if math.isnan(value) else f"{value:.2f}"


def _print_ranked(lines: list[str], distances: list[float], far: float | None) -> None:
    """Result lines, best first, with a line where the results above the calibrated ``far`` distance begin."""
    for line, distance in zip(lines, distances):
        if far is not None and distance > far:
            print(f"---- no close match below: distance above {far:.4f}, the model's calibrated threshold ----")
            far = None
        print(line)


def _track_cells(hits, identities: dict[str, str]) -> tuple[list[str], str]:
    """Each hit's track, followed in a linked store by its identity (``identities``: track -> identity), and the
    header of that column, all padded to one width."""
    tracks = [hit.track_id or "-" for hit in hits]
    width = max(5, *map(len, tracks)) if tracks else 5
    cells = [f"{track:<{width}}  {identities.get(hit.track_id, '-')}" for track, hit in zip(tracks, hits)]
    header = f"{'track':<{width}}  identity"
    if not identities:
        cells, header = tracks, "track"
    width = max(len(header), *map(len, cells)) if cells else len(header)
    return [cell.ljust(width) for cell in cells], header.ljust(width)


def _print_people(result) -> None:
    """One line per person: rank, distance, camera, UTC time span, matched/total detections, closest detection, track
    and, in a linked store, identity. An identity search lists the identity's own tracklets first, then, after a
    line, the people it does not hold yet; a line marks where those above the calibrated distance begin."""
    from pipelines.times import span_text

    people = result.people
    if not people and result.kind != "identity":
        print("no results (check the filters)")
        return
    spans = [span_text(p.t_start, p.t_end) for p in people]
    counts = [f"{p.matched}/{p.detections}" for p in people]
    cam_w = max(6, *(len(p.camera_id) for p in people)) if people else 6
    span_w = max(len("time span (UTC)"), *map(len, spans)) if people else len("time span (UTC)")
    det_w = max(9, *(len(p.best.detection_id) for p in people)) if people else 9
    tracks, header = _track_cells(result.hits, result.identities)
    print(f"{'rank':>4}  {'distance':>8}  {'camera':<{cam_w}}  {'time span (UTC)':<{span_w}}  {'matched':>7}  "
          f"{'detection':<{det_w}}  {header}".rstrip())
    lines = [f"{rank:>4}  {person.distance:>8.4f}  {person.camera_id:<{cam_w}}  {span:<{span_w}}  {count:>7}  "
             f"{person.best.detection_id:<{det_w}}  {track}".rstrip()
             for rank, (person, span, count, track) in enumerate(zip(people, spans, counts, tracks), 1)]
    for line in lines[:result.own]:
        print(line)
    if result.kind == "identity":
        print(f"---- above: the identity's {result.own} tracklet(s); below: people it does not hold yet ----")
    _print_ranked(lines[result.own:], [p.distance for p in people[result.own:]], result.no_close_match_above)


def _print_hits(hits, parts: list[int] | None, far: float | None, identities: dict[str, str]) -> None:
    """One line per hit: rank, distance, camera, UTC time, frame, track (and, in a linked store, its identity),
    visibility of the queried parts, id; a line marks where the hits above the calibrated ``far`` distance begin."""
    from pipelines.times import utc_text

    if not hits:
        print("no results (check the filters)")
        return
    cam_w = max(6, *(len(h.camera_id) for h in hits))
    tracks, header = _track_cells(hits, identities)
    print(f"{'rank':>4}  {'distance':>8}  {'camera':<{cam_w}}  {'time (UTC)':<19}  {'frame':>6}  {header}  "
          f"{'vis':>4}  detection")
    _print_ranked([f"{rank:>4}  {hit.distance:>8.4f}  {hit.camera_id:<{cam_w}}  {utc_text(hit.timestamp):<19}  "
                   f"{hit.frame_index:>6}  {track}  {_visibility(hit, parts):>4}  {hit.detection_id}"
                   for rank, (hit, track) in enumerate(zip(hits, tracks), 1)], [h.distance for h in hits], far)


def _print_groups(hits, parts: list[int] | None, identities: dict[str, str]) -> None:
    """The hits grouped by camera, then tracklet, best group first; ranks are those of the flat list."""
    from pipelines.times import utc_text
    from storage import group_hits

    if not hits:
        print("no results (check the filters)")
        return
    rank = {hit.detection_id: i for i, hit in enumerate(hits, 1)}
    for camera in group_hits(hits):
        count = sum(len(t.hits) for t in camera.tracklets)
        print(f"camera {camera.camera_id}: best {camera.best_distance:.4f}, {len(camera.tracklets)} tracklet(s), "
              f"{count} detection(s)")
        for track in camera.tracklets:
            times = [h.timestamp for h in track.hits]
            linked = f" (identity {identities[track.track_id]})" if track.track_id in identities else ""
            print(f"  track {track.track_id or '(none)'}{linked}: best {track.best_distance:.4f}, "
                  f"{len(track.hits)} detection(s), {utc_text(min(times))} .. {utc_text(max(times))}")
            for hit in track.hits:
                print(f"    {rank[hit.detection_id]:>4}  {hit.distance:>8.4f}  {utc_text(hit.timestamp)}  frame {hit.frame_index:>6}  "
                      f"vis {_visibility(hit, parts)}  {hit.detection_id}")


def _write_page(path: Path, title: str, query_thumb: bytes | None, result, grouped: bool, summary: dict) -> Path:
    """The self-contained HTML results page: one row of people, or of detections (one per camera with --group)."""
    from pipelines.html_report import ResultSection, people_section, write_results_html
    from storage import group_hits

    names, parts = result.part_names, result.parts

    def section(heading: str, shown) -> ResultSection:
        captions = [f"track {h.track_id}" if h.track_id else "no track" for h in shown]
        return ResultSection(heading, query_thumb, shown, hit_captions=captions, part_names=names, visibility_parts=parts,
                             no_close_match_above=result.no_close_match_above)

    if result.people is not None:
        sections = [people_section(title, query_thumb, result.people, names, parts, result.no_close_match_above)]
    elif grouped:
        sections = [section(f"camera {c.camera_id}: best d={c.best_distance:.3f}, {len(c.tracklets)} tracklet(s)",
                            [h for t in c.tracklets for h in t.hits]) for c in group_hits(result.hits)]
    else:
        sections = [section(title, result.hits)]
    return write_results_html(path, f"kpr search: {title}", sections, summary)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pipelines.calibrate import archive_identities, calibrate
    from storage import Store

    store = Store.open(args.db, create=False)
    also = [Store.open(db, create=False) for db in args.record_in or ()]
    for kind, threshold in calibrate(store, archive_identities(store), also).items():
        measure = "cosine distance of the global vectors" if kind == "global" else "KPR part distance"
        print(f"{measure}: no close match above {threshold.distance:.4f} ({threshold.same_at_or_below:.1%} of "
              f"{threshold.same_pairs} same-person tracklet pairs at or below it, {threshold.different_at_or_below:.1%} "
              f"of {threshold.different_pairs} different-person pairs)")
    print(f"recorded with the model of {', '.join(s.uri for s in (store, *also))}")
    return 0


def cmd_case(args: argparse.Namespace) -> int:
    from pipelines.cases import run_case_command

    return run_case_command(args)


def cmd_maintain(args: argparse.Namespace) -> int:
    from storage import Store

    store = Store.open(args.db, create=False)
    report = store.maintain(cleanup_older_than=timedelta(days=args.keep_days))
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, entry in value.items():
                detail = ", ".join(f"{k}={v}" for k, v in entry.items()) if isinstance(entry, dict) else entry
                print(f"  {name}: {detail}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pipelines.browse import show_list
    from pipelines.times import parse_time
    from storage import Store
    from storage.catalog import CatalogFilters, check_cameras

    if args.identities:
        if args.what not in ("cameras", "identities"):  # cameras: the positional's default, i.e. not given
            raise UserError(f"--identities lists identities, not {args.what}: give one of them")
        args.what = "identities"
    if args.status and args.what != "videos":
        raise UserError("--status goes with `kpr list videos`")
    if args.thumbnails and args.what not in ("tracklets", "identities"):
        raise UserError("--thumbnails goes with `kpr list tracklets` or `kpr list identities`")
    filters = CatalogFilters(tuple(args.camera) if args.camera else None, parse_time(args.since),
                             parse_time(args.until), args.min_detections, args.status)
    if filters.t_min is not None and filters.t_max is not None and filters.t_min > filters.t_max:
        raise UserError(f"--since {args.since} is after --until {args.until}")
    store = Store.open(args.db, create=False)
    check_cameras(store, args.camera or ())
    return show_list(store, args.what, filters, args.limit, args.offset, args.thumbnails, args.json)


def cmd_info(args: argparse.Namespace) -> int:
    from pipelines.browse import show_info
    from storage import Store

    return show_info(Store.open(args.db, create=False), args.json)


def cmd_journey(args: argparse.Namespace) -> int:
    import json

    from pipelines.journey import build_journey, journey_lines, journey_rows, person_sightings
    from pipelines.store_cameras import view_cameras
    from storage import Store

    store = Store.open(args.db, create=False)
    cameras = view_cameras(store, args.cameras)
    sightings, chosen = person_sightings(store, args.tracklet, args.same or (), args.k)
    journey = build_journey(sightings, cameras)
    if args.json:
        print(json.dumps({"query": args.tracklet, "chosen": chosen, **journey_rows(journey, cameras)}, indent=2))
    else:
        print(f"journey of {args.tracklet}: {len(sightings)} sighting(s) on "
              f"{len({s.camera_id for s in sightings})} camera(s); {chosen}")
        print("\n".join(journey_lines(journey, cameras)))
    if args.html:
        from pipelines.journey_page import write_journey_html

        page = write_journey_html(args.html, f"Journey of {args.tracklet}", journey, cameras, chosen)
        print(f"wrote {page}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.web.app import serve

    return serve(db=args.db, model=None if args.model is None else str(args.model), host=args.host, port=args.port,
                 max_upload_mb=args.max_upload_mb, model_input=args.model_input,
                 cameras_file=None if args.cameras is None else str(args.cameras), token=args.token)


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
    from training.train import train
    from training.train_config import TrainConfig

    if args.config is None and (args.data is None or args.out is None):
        raise UserError("kpr train needs a YAML config, or --data and --out")
    overrides = {key: value for key, value in (
        ("data_root", None if args.data is None else str(args.data)), ("out", None if args.out is None else str(args.out)),
        ("dataset", args.dataset), ("preset", args.preset), ("epochs", args.epochs), ("max_minutes", args.max_minutes),
        ("seed", args.seed), ("workers", args.workers), ("use_gpu", True if args.gpu else None),
        ("storage_path", args.storage), ("run_name", args.run_name),
    ) if value is not None}
    config = TrainConfig.from_yaml(args.config, overrides) if args.config else TrainConfig.from_dict(overrides)
    if config.workers:
        from workers.ray_stages import ensure_ray

        _quiet_prefect()
        ensure_ray(args.ray_address, log_to_driver=True)
    result = train(config)
    print(f"checkpoint {result['checkpoint']} (model_id {result['model_id']}): held-out mAP {result['heldout']['map']:.3f}, "
          f"rank-1 {result['heldout']['rank1']:.3f} after {result['steps']} steps in {result['train_s']:.0f} s "
          f"({result['samples_per_s']:.1f} samples/s, {config.workers or 'no'} Ray workers)")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from pipelines.adapt_flow import AdaptInputs, adapt_model

    inputs = AdaptInputs(str(args.db), str(args.model), str(args.out), args.teacher)
    inputs.check()  # one line before Prefect starts
    overrides = {key: value for key, value in (
        ("epochs", args.epochs), ("max_minutes", args.max_minutes), ("workers", args.workers),
        ("use_gpu", True if args.gpu else None), ("threads", args.threads),
        ("part_masks", False if args.no_part_masks else None), ("distill_weight", args.distill_weight),
        ("part_warmup_epochs", args.part_warmup_epochs),
    ) if value is not None}
    selection = {"cross_camera": False} if args.no_cross_camera else {}
    result = adapt_model(str(args.db), str(args.model), str(args.out), inputs.teacher, overrides, selection,
                         args.ray_address)
    source = result["source"]
    print(f"checkpoint {result['checkpoint']} (model_id {result['model_id']}): adapted from {result['adapted_from']} "
          f"on {source['crops']} crops of {source['tracklets']} tracklets ({source['pseudo_identities']} "
          f"pseudo-identities, {source['cameras']} cameras) in {result['steps']} steps, {result['train_s']:.0f} s")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from pipelines.link import LinkInputs, link_identities

    inputs = LinkInputs(str(args.db), args.cameras, args.threshold, args.neighbours, args.full)
    inputs.check()  # one line before Prefect starts
    result = link_identities(str(args.db), args.cameras, args.threshold, args.neighbours, args.full, args.ray_address)
    print(f"{result['mode']} run ({result['reason']}): linked {result['linked']} of {result['tracklets']} tracklets "
          f"-> {result['identities']} identities ({result['across_cameras']} seen by more than one camera) at "
          f"distance <= {result['threshold']:.4f}: {result['created']} new, {result['relinked']} relinked, "
          f"{result['unchanged']} unchanged, {result['removed']} removed (run {result['run_id']})")
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    from pipelines.identity_text import identity_lines
    from storage.identities import Identities

    identities = Identities.open(str(args.db))
    if args.action == "merge":
        row = identities.merge(args.ids, args.note or "")
        print(f"merged {', '.join(args.ids[1:])} into {row['identity_id']} ({len(row['tracklets'])} tracklets); "
              "later kpr link runs keep them together")
    elif args.action == "split":
        kept, new = identities.split(args.id, args.tracklet, args.note or "")
        print(f"split {len(new['tracklets'])} tracklet(s) off {kept['identity_id']} into {new['identity_id']}; "
              "later kpr link runs keep them apart")
    else:
        print("\n".join(identity_lines(identities.get(args.id))))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import DemoConfig, run_demo

    report = run_demo(DemoConfig(out=Path(args.out), train_minutes=args.train_minutes, quick=args.quick))
    return 0 if report["cross_camera_top1"] > report["chance_top1"] else EXIT_PARTIAL


def cmd_bench(args: argparse.Namespace) -> int:
    from pipelines.benchmarking import benchmark_checkpoint

    datasets = [_name_equals(text, "--data", "NAME=ROOT") for text in args.data]
    baseline_pairs = [_name_equals(text, "--baseline", "NAME=ONNX") for text in args.baseline or []]
    names = [name.lower() for name, _ in datasets]
    if len(set(names)) < len(names):
        raise UserError("give each dataset name once in --data (the report files are named after it)")
    baselines = dict(baseline_pairs)
    if len(baselines) < len(baseline_pairs):
        raise UserError("give each --baseline a name of its own")
    report = benchmark_checkpoint(str(args.model), dict(datasets), str(args.out), modes=args.modes, baselines=baselines,
                                  rerank=args.rerank, top_k=args.top_k, queries_shown=args.queries_shown,
                                  command=_bench_command(args))
    for line in report["lines"]:
        print(line)
    print(f"wrote {', '.join(report['written'])}", file=sys.stderr)
    return 0


def cmd_import_official(args: argparse.Namespace) -> int:
    from kpr_model.official_import import write_official_model

    model_id, notes = write_official_model(args.file, args.out, args.semantic_weight, args.dataset_cameras)
    for note in notes:
        print(note, file=sys.stderr)
    print(f"imported {args.file} as {args.out} (model_id {model_id})")
    return 0


def cmd_hybrid(args: argparse.Namespace) -> int:
    from kpr_model.hybrid_files import write_hybrid
    from kpr_model.model_facts import hybrid_facts

    facts = hybrid_facts(args.kpr, args.global_model, args.holistic_weight, args.model_input)
    write_hybrid(args.out, args.kpr, args.global_model, args.holistic_weight, args.model_input)
    print(f"hybrid model {args.out} (model_id {facts.model_id}): the {facts.num_parts} parts of {args.kpr} and the "
          f"whole body of {args.global_model.name}, D={facts.dim}, whole body counted {facts.holistic_weight:g}x")
    return 0


def _bench_command(args: argparse.Namespace) -> str:
    """The `kpr bench` command line that reproduces ``args`` (recorded in the report)."""
    import shlex

    return shlex.join(["kpr", "bench", "--model", str(args.model), *(x for d in args.data for x in ("--data", d)),
                       "--out", str(args.out), "--modes", ",".join(args.modes),
                       *(x for b in args.baseline or [] for x in ("--baseline", b)), *(["--rerank"] if args.rerank else []),
                       "--top-k", str(args.top_k), "--queries-shown", str(args.queries_shown)])


def _name_equals(text: str, option: str, form: str) -> tuple[str, str]:
    """NAME and VALUE of a NAME=VALUE option value; UserError naming the option otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise UserError(f"{option} takes {form}, got {text!r}")
    return name, value


def _bench_modes(text: str) -> tuple[str, ...]:
    """The comma-separated benchmark modes of --modes, each known and given once."""
    from training.benchmark import MODES

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown or len(set(modes)) < len(modes):
        raise argparse.ArgumentTypeError(f"expected distinct modes among {','.join(MODES)}, got {text!r}")
    return modes


def _model_input_option(parser: argparse.ArgumentParser) -> None:
    """--model-input: how a global ReID ONNX model wants its pixels (the model file checks the name)."""
    parser.add_argument("--model-input", metavar="CODING",
                        help="pixel coding of a global ReID .onnx model: bgr255, rgb255, rgb01 or imagenet (default: "
                             "the file's reid_input metadata, else bgr255 as Open Model Zoo models want)")


def _store_actions(command: argparse.ArgumentParser, db_help: str) -> tuple[argparse._SubParsersAction, _Parser]:
    """A command's required ACTION sub-commands, and the parent parser that gives each of them --db."""
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    on_store = _Parser(add_help=False)
    on_store.add_argument("--db", required=True, help=db_help)
    return actions, on_store


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kpr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "ingest", help="ingest the videos of an archive folder into a LanceDB store",
        description="Decode, detect, track, embed (KPR) and store every new video of ARCHIVE. Runs a Prefect flow\n"
                    "(ephemeral local server unless PREFECT_API_URL is set) over Ray (local unless --ray-address /\n"
                    "RAY_ADDRESS). Videos are split into --segment-s segments spread over --detectors detection and\n"
                    "--embedders embedding actors. Re-runs skip videos already done with the same model.",
        epilog="Detection backends and where their model files come from (README: detection backends):\n"
               "  annotations  people and keypoints from each video's annotation file beside it (kpr sidecar,\n"
               "               PoseTrack21 or COCO json, MOT gt.txt); no model file.\n"
               "  yolox        person boxes from a YOLOX ONNX file (--detector-model, e.g. yolox_nano_416x416.onnx:\n"
               "               Megvii YOLOX-Nano, COCO, ONNX conversion by Kazuhito00), keypoints from --pose-model.\n"
               "  openpifpaf   boxes + keypoints from a local OpenPifPaf checkpoint (--openpifpaf-checkpoint, e.g.\n"
               "               shufflenetv2k16 from the openpifpaf releases; scripts/install_openpifpaf.sh installs\n"
               "               the package); checkpoints are pickled models: load only trusted files.\n"
               "  --pose-model is a MoveNet SinglePose .tflite (e.g. movenet_singlepose_lightning_int8.tflite,\n"
               "  Google, TF Hub): top-down keypoints for boxes without any (yolox, MOT annotations).\n\n"
               "Cameras file (README: the cameras file): cameras.yaml in ARCHIVE, or --cameras FILE, e.g.\n"
               + textwrap.indent(CAMERAS_EXAMPLE, "  ") +
               "  Stored times stay UTC; videos already ingested keep theirs.\n\n"
               "Example:\n  kpr ingest /data/archive --db store --model ckpt --backend yolox \\\n"
               "      --detector-model models/yolox_nano_416x416.onnx \\\n"
               "      --pose-model models/movenet_singlepose_lightning_int8.tflite --detectors 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("archive", type=Path, help="folder of videos (one sub-folder per camera) or a single video")
    p.add_argument("--db", required=True, help="LanceDB store: a local folder (created if missing) or an object-store URI")
    p.add_argument("--model", required=True,
                   help="KPR model (a checkpoint folder from `kpr train` or `kpr demo`, or an exported .onnx file) or a "
                        "global person-ReID .onnx file (e.g. person-reidentification-retail-0248.onnx); one model per "
                        "store")
    _model_input_option(p)
    p.add_argument("--replace-model", action="store_true",
                   help="the store holds another model's embeddings: drop them and re-embed every video the store "
                        "lists (from its recorded location) and the archive's new ones with --model")
    p.add_argument("--cameras", metavar="FILE",
                   help="cameras file: names, time zones, clock offsets or start times, positions (default: "
                        "ARCHIVE/cameras.yaml when there is one; see below)")
    # Defaults and checks of the knobs are IngestOptions' own (it refuses a bad value with one line).
    p.add_argument("--fps", type=float, default=IngestOptions.target_fps,
                   help="frames sampled per second of video (default %(default)s)")
    p.add_argument("--backend", choices=BACKENDS,
                   help=f"where people and keypoints come from (default: yolox when {DETECTOR_MODEL_ENV} is set, "
                        f"else annotations; see below)")
    p.add_argument("--detector-model", metavar="ONNX",
                   help=f"YOLOX ONNX person detector (needed with --backend yolox; default: {DETECTOR_MODEL_ENV})")
    p.add_argument("--pose-model", metavar="TFLITE",
                   help=f"MoveNet SinglePose .tflite: keypoints for detections without any (yolox, MOT boxes; "
                        f"with yolox the default is {POSE_MODEL_ENV})")
    p.add_argument("--openpifpaf-checkpoint", metavar="FILE",
                   help="local OpenPifPaf checkpoint (needed with --backend openpifpaf)")
    p.add_argument("--min-score", type=float, default=BackendConfig.min_score, metavar="F",
                   help="detector score threshold in [0, 1] (yolox, openpifpaf; default %(default)s)")
    p.add_argument("--min-box-height", type=float, default=BackendConfig.min_box_height, metavar="PX",
                   help="detector boxes shorter than this many pixels are dropped before pose and embedding: too "
                        "small to re-identify (yolox, openpifpaf; default %(default)s)")
    p.add_argument("--device", default=IngestOptions.device,
                   help="where the detector and KPR run: cpu or cuda[:N] (default %(default)s)")
    p.add_argument("--segment-s", type=float, default=IngestOptions.segment_s,
                   help="seconds of video per work item, so a long video is spread over workers (default %(default)s)")
    p.add_argument("--detectors", type=int, default=IngestOptions.detectors,
                   help="detection/pose actors (default %(default)s)")
    p.add_argument("--embedders", type=int, default=IngestOptions.embedders,
                   help="KPR embedding actors (default %(default)s)")
    p.add_argument("--batch-frames", type=int, default=IngestOptions.batch_frames, metavar="N",
                   help="decoded frames per batch sent to detection and embedding (default %(default)s)")
    p.add_argument("--max-batches-in-flight", type=int, default=IngestOptions.max_batches_in_flight, metavar="N",
                   help="most decoded frame batches alive at once, which bounds memory; at least 2: one decoding, "
                        "one detecting (default %(default)s)")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="find a person in the other cameras of a store",
                       description="Top-k people (tracklets) of other cameras for a stored detection, a stored\n"
                                   "tracklet, a global identity (kpr link) or an image crop, ranked by their closest\n"
                                   "detection (each with its identity once the store is linked): ANN on the global\n"
                                   "embedding, then exact visibility-weighted KPR part-distance re-ranking,\n"
                                   "optionally k-reciprocal re-ranking. Each person line gives its camera, time span\n"
                                   "(UTC), how many of its detections matched, its closest detection and its track;\n"
                                   "--detections lists the top-k detections instead. With --part only those body\n"
                                   "parts count (\"find these boots\": --part left_foot --part right_foot).",
                       epilog="Examples:\n"
                              "  kpr search --db store --detection VIDEO_ID:0000120:000 --html hits.html\n"
                              "  kpr search --db store --tracklet 3f2a9c01d2e4-t7 --camera north --since 2026-01-01T08:00\n"
                              "  kpr search --db store --image crop.png --model ckpt --keypoints kp.json "
                              "--part left_foot --part right_foot --min-visibility 0.3 --group\n"
                              "  kpr search --db store --tracklet 3f2a9c01d2e4-t7 --same 7b01c2d3e4f5:0000410:001 "
                              "--not 7b01c2d3e4f5:0000088:000",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--detection", metavar="ID", help="query with a stored detection id")
    query.add_argument("--tracklet", metavar="ID", help="query with a stored tracklet id (its detections aggregated)")
    query.add_argument("--identity", metavar="ID",
                       help="where else a global identity (kpr link) appears: its representative tracklet with its "
                            "other tracklets confirmed, over every camera; lists its own tracklets first, then the "
                            "people it does not hold yet")
    query.add_argument("--image", type=Path, help="query with an image crop of the person (needs --model)")
    p.add_argument("--keypoints", type=Path,
                   help="JSON keypoint prompt for --image, in crop pixels: 17 COCO [x, y, conf] (optionally with "
                        "negative_keypoints of occluding people), or clicked points {\"positive\": [{\"joint\": "
                        "\"left_ankle\", \"x\": 20, \"y\": 90}], \"negative\": [{\"x\": 5, \"y\": 40}]}")
    p.add_argument("--model", help="the store's model (checkpoint folder or .onnx file), needed with --image")
    _model_input_option(p)
    p.add_argument("--global-only", action="store_true",
                   help="rank by the cosine distance of the global vectors alone, without parts (always so for a "
                        "store of a global ReID model)")
    p.add_argument("--db", required=True, help="LanceDB store written by `kpr ingest`")
    p.add_argument("-k", "--k", type=_positive(int), default=10,
                   help="number of people (tracklets), or of detections with --detections (default 10)")
    p.add_argument("--part", action="append", metavar="NAME|NUMBER",
                   help="compare only this body part (repeatable): a name (head, left_arm, right_arm, torso, left_leg, "
                        "right_leg, left_foot, right_foot for 8-part models) or a number from 1")
    p.add_argument("--camera", action="append", help="only these cameras (repeatable)")
    p.add_argument("--since", help="only detections at or after this time (ISO 8601 or epoch seconds, UTC)")
    p.add_argument("--until", help="only detections at or before this time")
    p.add_argument("--min-visibility", type=_fraction, default=0.0, metavar="F",
                   help="only hits whose queried parts (all parts without --part) have a mean visibility >= F, "
                        "0..1 (default 0)")
    p.add_argument("--same-camera", action="store_true",
                   help="with --detection or --tracklet, also search the query's own camera")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (Zhong et al. 2017) of the candidates")
    p.add_argument("--detections", action="store_true",
                   help="list the top-k detections (several may be one tracklet's) instead of the top-k people")
    p.add_argument("--group", action="store_true",
                   help="list the top-k detections grouped by camera and tracklet (implies --detections)")
    p.add_argument("--same", action="append", metavar="ID",
                   help="relevance feedback: a detection id of an earlier hit that is the same person (repeatable); "
                        "the query is fused with it part by part, so its view supplies the parts the query hides")
    p.add_argument("--not", dest="rejected", action="append", metavar="ID",
                   help="relevance feedback: a detection id of an earlier hit that is not this person (repeatable); "
                        "hits that resemble it more than the query go down. Marked hits (and, in the list of "
                        "people, their tracklets) are not listed again")
    p.add_argument("--html", type=Path, help="also write a self-contained HTML page of the results with thumbnails")
    p.add_argument("--case", metavar="NAME",
                   help="record the query and the results shown in this case (a named investigation kept in the "
                        "store, started on first use; see kpr case)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("calibrate", help="measure the model's \"no close match\" distance on a labelled store",
                       description="Measures, on a store of a labelled archive (the annotation sidecars beside its\n"
                                   "videos say who each detection is, as `kpr synth` writes them), the distances\n"
                                   "between tracklets of the same person and of different people across cameras, as\n"
                                   "people search measures them, and records in the store's model record the distance\n"
                                   "that best separates them (and in those of --record-in). kpr search and kpr serve\n"
                                   "then mark the results above it as \"no close match\" (not for part or re-ranked\n"
                                   "searches, whose distances are on other scales).")
    p.add_argument("--db", required=True, help="LanceDB store of a labelled archive, written by `kpr ingest`")
    p.add_argument("--record-in", action="append", metavar="DB",
                   help="also record the threshold in this store of the same model, e.g. the archive's (repeatable)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("case", help="named investigations: list them, show one's timeline, note, mark, export evidence",
                       description="A case is a named investigation kept in the store: `kpr search ... --case NAME`\n"
                                   "records each query and the results it showed; marks and notes are added here.\n"
                                   "export writes an evidence bundle readable offline: index.html, case.json, the\n"
                                   "thumbnails and the archived frames with the box drawn, provenance per result\n"
                                   "and a SHA-256 manifest of every file.",
                       epilog="Examples:\n  kpr search --db store --tracklet 3f2a9c01d2e4-t7 --case lobby\n"
                              "  kpr case list --db store\n  kpr case show lobby --db store\n"
                              "  kpr case mark lobby --db store --same VIDEO_ID:0000120:000 --not VIDEO_ID:0000480:001\n"
                              "  kpr case export lobby --db store --out lobby-evidence",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions, on_store = _store_actions(p, "LanceDB store written by `kpr ingest`")
    actions.add_parser("list", parents=[on_store], help="list the store's cases, most recently active first")
    a = actions.add_parser("show", parents=[on_store], help="print a case's timeline: searches, results, marks, notes")
    a.add_argument("name", help="the case's name")
    a = actions.add_parser("note", parents=[on_store], help="add a note to a case")
    a.add_argument("name", help="the case's name")
    a.add_argument("text", help="the note")
    a = actions.add_parser("mark", parents=[on_store], help="record results marked as the same person or not")
    a.add_argument("name", help="the case's name")
    a.add_argument("--same", action="append", metavar="ID", help="a detection id of the same person (repeatable)")
    a.add_argument("--not", dest="rejected", action="append", metavar="ID",
                   help="a detection id of another person (repeatable)")
    a = actions.add_parser("export", parents=[on_store], help="write a case's evidence bundle into a new folder")
    a.add_argument("name", help="the case's name")
    a.add_argument("--out", type=Path, required=True, help="the bundle's folder (new or empty)")
    p.set_defaults(func=cmd_case)

    p = sub.add_parser("maintain", help="compact a store, drop old versions and (re)build its indexes",
                       description="Compacts the store's small per-video fragments, removes table versions older "
                                   "than --keep-days, and (re)builds the scalar indexes and, once the store is large, "
                                   "the ANN vector index. Run it between ingestion runs.")
    p.add_argument("--db", required=True, help="LanceDB store written by `kpr ingest`")
    p.add_argument("--keep-days", type=_non_negative(float), default=7.0,
                   help="keep table versions newer than this many days (default 7)")
    p.set_defaults(func=cmd_maintain)

    p = sub.add_parser(
        "list", help="list a store's cameras, videos, tracklets or identities, to find one to search with",
        description="Lists what a store holds, one page at a time: cameras (videos, detections, tracklets, first and\n"
                    "last detection), videos (start, duration, detections, status and error), tracklets (the id\n"
                    "that kpr search --tracklet takes, camera, video, time span, detections, best detection) or\n"
                    "identities (the people kpr link found across cameras: the id kpr search --identity takes,\n"
                    "tracklets, cameras, detections, first and last seen, best tracklet, mean link confidence).\n"
                    "Times are UTC. Reads the store only.",
        epilog="Examples:\n  kpr list --db store\n"
               "  kpr list --db store tracklets --camera north --since 2026-01-01T08:00 --min-detections 10 \\\n"
               "      --thumbnails thumbs\n  kpr list --db store videos --status failed\n"
               "  kpr list --db store identities --camera lobby --thumbnails people",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=("cameras", "videos", "tracklets", "identities"), default="cameras",
                   help="what to list (default cameras)")
    p.add_argument("--db", required=True, help="LanceDB store written by `kpr ingest`")
    p.add_argument("--identities", action="store_true", help="the same as `kpr list identities`")
    p.add_argument("--camera", action="append", help="only these cameras (repeatable)")
    p.add_argument("--since", help="only what reaches this time or later (ISO 8601 or epoch seconds, UTC)")
    p.add_argument("--until", help="only what starts at this time or earlier")
    p.add_argument("--min-detections", type=_non_negative(int), default=0, metavar="N",
                   help="only cameras, videos, tracklets or identities with at least N detections (default 0)")
    p.add_argument("--status", choices=("done", "failed", "writing"), help="only videos with this status")
    p.add_argument("--limit", type=_positive(int), default=50, help="rows shown (default 50)")
    p.add_argument("--offset", type=_non_negative(int), default=0, help="rows skipped first (default 0)")
    p.add_argument("--thumbnails", type=Path, metavar="DIR",
                   help="write each listed tracklet's best thumbnail as DIR/<tracklet id>.jpg (each identity's "
                        "representative one as DIR/<identity id>.jpg)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="summarize a store: model, rows, cameras, time range, indexes, versions",
                       description="Prints what a store holds: its location and size on disk, schema versions, model "
                                   "(id, kind, parts K, dimension D), rows per table, cameras, videos by status, the "
                                   "time range of its detections (UTC), its identities (kpr link), its indexes "
                                   "(type, indexed and unindexed rows) and table versions. Reads the store only.")
    p.add_argument("--db", required=True, help="LanceDB store written by `kpr ingest`")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "journey", help="where a person went: their sightings across cameras in time order, with the transits",
        description="The journey of the person of a tracklet: the tracklet and the sightings confirmed with --same\n"
                    "(else the query's people search hits within the model's calibrated no-close-match distance),\n"
                    "in time order, one line each (camera, local time, UTC), with the transit between cameras:\n"
                    "its gap, the cameras file's usual transit time (connects_to, either way) and whether it is\n"
                    "plausible, too fast or impossible (on two cameras at once; cameras linked with 0 s see one\n"
                    "place). --html writes a page: a lane per camera on a shared time axis, the thumbnails in\n"
                    "time order, the transits as arrows, and a camera map when the file gives positions.",
        epilog="Examples:\n  kpr journey --db store --tracklet 3f2a9c01d2e4-t7 --cameras cameras.yaml --html journey.html\n"
               "  kpr journey --db store --tracklet 3f2a9c01d2e4-t7 --same 7b01c2d3e4f5-t2 --same 7b01c2d3e4f5:0000410:001",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="LanceDB store written by `kpr ingest`")
    p.add_argument("--tracklet", required=True, metavar="ID",
                   help="the person's tracklet (or one of its detections, or a detection of no tracklet)")
    p.add_argument("--same", action="append", metavar="ID",
                   help="a tracklet, or a detection (its tracklet), confirmed as the same person (repeatable)")
    p.add_argument("-k", "--k", type=_positive(int), default=20,
                   help="without --same: the most search hits taken, those within the calibrated distance (default 20)")
    p.add_argument("--cameras", type=Path, metavar="FILE",
                   help="cameras file (as for kpr ingest): display names, time zones, transit times, positions "
                        "(default: the one the store's latest ingestion read, if any)")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML page of the journey")
    p.add_argument("--json", action="store_true", help="print the journey as JSON instead of lines")
    p.set_defaults(func=cmd_journey)

    p = sub.add_parser("serve", help="run the search web page over a store",
                       description="Serves a web page to search the store by detection, tracklet or uploaded crop "
                                   "(with clicked keypoints), with filters and grouped results.")
    p.add_argument("--db", required=True, help="LanceDB store written by `kpr ingest`")
    p.add_argument("--model", type=Path, help="the store's model (checkpoint folder or .onnx file), needed for image "
                                              "queries")
    _model_input_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_bounded(int, 1, 65535, True, "a port number 1..65535"), default=8765,
                   help="port (default 8765)")
    p.add_argument("--max-upload-mb", type=_positive(float), default=8.0, help="largest accepted upload (default 8)")
    p.add_argument("--cameras", type=Path, metavar="FILE",
                   help="cameras file (as for kpr ingest) whose display names and time zones the hit views show "
                        "(default: the one the store's latest ingestion read; without one, camera ids and UTC)")
    p.add_argument("--token", help="secret every API request must carry (open the page once as /?token=TOKEN); "
                                   "required to listen on a non-loopback --host (default: $KPR_SERVE_TOKEN)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("synth", help="render a synthetic multi-camera archive (videos + sidecar annotations)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: the same seed and options render the same world (default 0)")
    p.add_argument("--identities", type=_positive(int), default=16,
                   help="people in the world, each walking through 2 or 3 of the cameras; with more of them, "
                        "more share a torso or trouser colour (22 torso colours), so they are harder to tell "
                        "apart; give a longer --duration so that each one is seen (default 16)")
    p.add_argument("--cameras", type=_bounded(int, 2, 9, True, "2..9"), default=4,
                   help="cameras, one video each, 2 to 9 (default 4)")
    p.add_argument("--duration", type=_positive(float), default=30.0, help="seconds of video per camera (default 30)")
    p.add_argument("--crops", type=Path, help="also export ReID crops in the Market-1501 layout to this folder")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "train", help="train a KPR model (in this process, or DDP on Ray Train workers)",
        description="Trains KPR on a ReID dataset and writes a checkpoint folder (safetensors + config.json), after "
                    "evaluating it on the dataset's query/gallery split. Settings come from an optional YAML file "
                    "(any TrainConfig field: epochs, lr, optimizer, warmup_epochs, fixbase_epochs, "
                    "identities_per_batch, instances_per_identity, workers, cpus_per_worker, max_failures, ...); "
                    "the flags below override it. With --workers N > 0 a Ray Train TorchTrainer runs N DDP workers, "
                    "checkpoints every epoch under --storage/--run-name, restarts from the last checkpoint when a "
                    "worker dies, and a re-run of the same run resumes where it stopped.")
    p.add_argument("config", nargs="?", type=Path, help="YAML training config (optional)")
    p.add_argument("--data", type=Path, help="dataset root (e.g. bounding_box_train/, query/, bounding_box_test/ for Market-1501)")
    p.add_argument("--dataset", help="dataset layout: synthetic (default), market1501, occluded_duke, occluded_reid, "
                                     "partial_reid, occ_posetrack21")
    p.add_argument("--out", type=Path, help="checkpoint folder to write")
    p.add_argument("--preset", choices=["tiny", "demo", "default"], help="model size preset (default demo)")
    p.add_argument("--epochs", type=_positive(int))
    p.add_argument("--max-minutes", type=_positive(float), help="stop after this many minutes of training")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="Ray Train DDP workers (0 = in this process, without Ray)")
    p.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    p.add_argument("--storage", help="where Ray Train keeps run checkpoints (a folder or object-store URI; "
                                     "default kpr_runs/ beside --out)")
    p.add_argument("--run-name", help="run name under --storage; re-running the same name resumes it")
    p.add_argument("--ray-address", help="existing Ray cluster (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "adapt", help="adapt a KPR checkpoint to an ingested archive, without labels",
        description="Fine-tunes a KPR checkpoint (or KPR built on the trunk of a global ReID ONNX model given as\n"
                    "--model) on the archive ingested into --db: each tracklet is a pseudo-identity\n"
                    "(tracklets of two cameras merged when mutually nearest and similar, never two that overlap in\n"
                    "time in one camera), crops are cut again from the videos at full resolution, the detector's\n"
                    "keypoints are the prompts and draw part pseudo-masks for the part classifier, and with --teacher\n"
                    "a global ReID ONNX model's similarities are distilled. Runs the Prefect flow adapt-model; with\n"
                    "--workers N > 0 training runs on N Ray Train workers. Ingest the archive again with --out as\n"
                    "--model (into a new store) to search it with the adapted model.",
        epilog="Examples:\n  kpr adapt --db store --model models/person-reidentification-retail-0248.onnx --out kpr_0248\n"
               "  kpr adapt --db store --model ckpt --out ckpt_adapted \\\n"
               "      --teacher models/person-reidentification-retail-0248.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="LanceDB store written by kpr ingest (its videos must still be readable)")
    p.add_argument("--model", required=True, type=Path,
                   help="KPR checkpoint folder to start from, or a global ReID ONNX model (e.g. OMZ 0248): KPR is built "
                        "on its trunk, keeping its real-data weights, and it is the teacher unless --teacher is given")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to create (must not exist)")
    p.add_argument("--teacher", metavar="ONNX",
                   help="global ReID ONNX model to distil from (e.g. person-reidentification-retail-0248.onnx); "
                        "it also decides which tracklets of two cameras are merged")
    p.add_argument("--epochs", type=_positive(int), help="training epochs (defaults: README, Adapting to your archive)")
    p.add_argument("--max-minutes", type=_positive(float),
                   help="stop training after this many minutes")
    p.add_argument("--workers", type=_non_negative(int), help="Ray Train DDP workers (default 0: in this process)")
    p.add_argument("--gpu", action="store_true", help="one GPU per Ray Train worker")
    p.add_argument("--threads", type=_positive(int), help="torch CPU threads when training in this process")
    p.add_argument("--no-part-masks", action="store_true", help="do not train the part classifier on keypoint masks")
    p.add_argument("--no-cross-camera", action="store_true", help="never merge tracklets of different cameras")
    p.add_argument("--distill-weight", type=_non_negative(float),
                   help="weight of the teacher's relational loss (0: the teacher only decides merges)")
    p.add_argument("--part-warmup-epochs", type=_non_negative(int),
                   help="first epochs that train only the part classifier, on the keypoint masks (default: a third "
                        "of the epochs when --model is a global ONNX model, whose KPR starts with a fresh one; else 0)")
    p.add_argument("--ray-address", help="existing Ray cluster (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser(
        "link", help="group a store's tracklets into people across cameras (global identities)",
        description="Links the tracklets of --db into global identities: candidate pairs are each tracklet's nearest\n"
                    "neighbours, scored by the KPR part distance between tracklet aggregates, and grouped by average\n"
                    "linkage under --threshold; two tracklets of one video at the same time, or on two cameras at\n"
                    "once (unless their link starts at 0 s: they see the same place), are never one person, and\n"
                    "with --cameras two cameras link directly only when connected, within their transit window\n"
                    "(a person the tracker lost and found again in one video may link). Writes the store's\n"
                    "identities table in one commit (ids stay the same when nothing changed). Runs the Prefect flow\n"
                    "link-identities, the linking in a Ray task.",
        epilog="Example:\n  kpr link --db store --cameras archive/cameras.yaml --threshold 0.9",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="LanceDB store written by kpr ingest")
    p.add_argument("--cameras", metavar="FILE",
                   help="cameras file whose connects_to links ([fastest, slowest] seconds, or the usual time t: "
                        "[t/2, 4t]) constrain who can be the same person (default: the one the store's latest "
                        "ingestion read; without one, no topology)")
    p.add_argument("--threshold", type=_positive(float),
                   help="largest KPR distance between two linked groups (default: the model's calibrated "
                        "no-close-match distance, kpr calibrate)")
    p.add_argument("--neighbours", type=_positive(int), default=15,
                   help="candidate neighbours per tracklet (default 15)")
    p.add_argument("--full", action="store_true",
                   help="relink every tracklet (default: once the store has identities made with its model, only "
                        "the tracklets in none of them are linked, joining one or making new ones)")
    p.add_argument("--ray-address", help="existing Ray cluster (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_link)

    p = sub.add_parser(
        "identity", help="show one global identity, or merge or split identities by hand",
        description="Hand edits of the identities kpr link made. merge joins identities into the first one given;\n"
                    "split takes tracklets off an identity into a new one. Each edit is recorded in the store\n"
                    "(who, when, --note) and later kpr link runs respect it: merged tracklets stay together, split\n"
                    "ones stay apart (a later merge undoes the part of an earlier split it contradicts). show prints\n"
                    "an identity's tracklets, cameras and history of runs and edits.",
        epilog="Examples:\n  kpr identity show --db store person-3f2a9c01d2e4a5b6\n"
               "  kpr identity merge --db store person-3f2a9c01d2e4a5b6 person-77c0e1d2a3b4c5d6 --note 'same coat'\n"
               "  kpr identity split --db store person-3f2a9c01d2e4a5b6 --tracklet 7b01c2d3e4f5-t2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions, on_store = _store_actions(p, "LanceDB store linked by kpr link")
    edit = _Parser(add_help=False)
    edit.add_argument("--note", help="why (kept with the edit)")
    a = actions.add_parser("show", parents=[on_store], help="print an identity's tracklets, cameras and history")
    a.add_argument("id", help="identity id (kpr list --db DB identities)")
    a = actions.add_parser("merge", parents=[on_store, edit], help="merge identities into the first one given")
    a.add_argument("ids", nargs="+", metavar="ID", help="two or more identity ids; the first keeps its id")
    a = actions.add_parser("split", parents=[on_store, edit], help="take tracklets off an identity into a new one")
    a.add_argument("id", help="identity id")
    a.add_argument("--tracklet", action="append", required=True, metavar="ID",
                   help="a tracklet of the identity to take off (repeatable)")
    p.set_defaults(func=cmd_identity)

    p = sub.add_parser("demo", help="synthetic archive -> train KPR -> ingest -> cross-camera search, with a report",
                       description="Generates a synthetic multi-camera archive, trains a small KPR model on held-out "
                                   "synthetic identities, ingests the archive and queries every identity across cameras. "
                                   "Writes demo_report.json and demo_report.html into --out.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--train-minutes", type=_positive(float), default=8.0,
                   help="cap on training time; training stops early if it is reached (default 8)")
    p.add_argument("--quick", action="store_true", help="a much smaller world and training, for smoke tests")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench", help="benchmark a checkpoint: with prompts, without prompts, global embedding only, and baselines",
        description="Evaluates a KPR checkpoint on the query/gallery split of each --data dataset in three modes:\n"
                    "prompt (the dataset's target and negative keypoints as prompts, KPR part distance), no_prompt\n"
                    "(no keypoints, KPR part distance) and global (the holistic embedding of the un-prompted pass\n"
                    "alone), plus each --baseline global ReID model. Reports mAP, CMC rank-1/5/10 and mINP with the\n"
                    "dataset's own camera rule, and writes benchmark.json, benchmark.md, cmc_<dataset>.png and\n"
                    "ranking_<dataset>.html (query, top-k, part heatmaps, per-part visibility and distances) to --out.",
        epilog="Example:\n  kpr bench --model ckpt --data synthetic=crops --data occluded_duke=/data --out report \\\n"
               "      --baseline omz_0248=models/person-reidentification-retail-0248.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path,
                   help="KPR checkpoint folder (from `kpr train` or `kpr import-official`)")
    p.add_argument("--data", required=True, action="append", metavar="NAME=ROOT",
                   help="dataset name (synthetic, market1501, occluded_duke, occluded_reid, partial_reid, "
                        "occ_posetrack21) and its folder; repeatable")
    p.add_argument("--out", required=True, type=Path, help="folder for the report files")
    p.add_argument("--modes", type=_bench_modes, default=("prompt", "no_prompt", "global"),
                   help="comma-separated modes among prompt,no_prompt,global (default all three)")
    p.add_argument("--baseline", action="append", metavar="NAME=ONNX",
                   help="also score a global ReID ONNX model (one image in, one embedding out, cosine; layout and "
                        "size read from the file, BGR 0..255 pixels unless its metadata says otherwise), e.g. "
                        "person-reidentification-retail-0248; repeatable")
    p.add_argument("--rerank", action="store_true",
                   help="also report every method after k-reciprocal re-ranking (as <method>+rerank)")
    p.add_argument("--top-k", type=_positive(int), default=10, help="gallery crops shown per query (default 10)")
    p.add_argument("--queries-shown", type=_non_negative(int), default=20,
                   help="queries on the ranking page, spread over the query list (default 20)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "import-official", help="turn an official KPR checkpoint file into a model folder for --model",
        description="Reads an official KPR checkpoint (SOLIDER Swin-B): a torchreid .pth.tar (weights, training config,\n"
                    "metrics, optimizer state) or a bare state dict, without running code from the file, and writes\n"
                    "a model folder that kpr ingest, search, serve and bench take as --model. The file's training\n"
                    "config decides the input size, normalisation and the camera embedding (which only kpr bench\n"
                    "on the training dataset adds). The SOLIDER semantic weight is the official test configuration's\n"
                    "(-1, semantic layers unused, for Occluded-Duke and Market-1501), else the file's, else -1.",
        epilog="Example:\n  kpr import-official kpr_occ_duke_SOLIDER_75.12_84.25_41443413.pth.tar --out models/kpr_occ_duke",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path, help="official checkpoint file (.pth.tar or .pth)")
    p.add_argument("--out", required=True, type=Path, help="model folder to create (must not exist)")
    p.add_argument("--dataset-cameras", type=_positive(int), metavar="N",
                   help="camera count of the dataset the file was trained on; the file's camera embedding must "
                        "have as many (a check for files without a training config)")
    p.add_argument("--semantic-weight", type=_bounded(float, -1.0, 1.0, True, "-1 (unused) or between 0 and 1"),
                   metavar="W", help="SOLIDER semantic weight to use instead (-1: semantic layers unused)")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser(
        "hybrid", help="pair a KPR checkpoint (body parts) with a global ReID ONNX model (whole body)",
        description="Writes a hybrid model folder that kpr ingest, search and serve take as --model. Each crop is\n"
                    "embedded by both: the global model's vector is the whole-body entry (the vector the index\n"
                    "searches, and the whole-body term of the part distance, counted --holistic-weight times among\n"
                    "the visible parts), KPR gives the body parts and their visibility. On real video a global model\n"
                    "trained on real people (Intel's OMZ 0248) ranks whole bodies best; KPR adds the parts, for\n"
                    "part queries and half-hidden people (README, Searching a real archive). The two must give\n"
                    "embeddings of one size: a KPR adapted from the global model (kpr adapt --model GLOBAL.onnx) does.",
        epilog="Example:\n  kpr hybrid --kpr kpr_0248 --global models/person-reidentification-retail-0248.onnx --out hybrid_0248",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kpr", required=True, type=Path, help="KPR checkpoint folder (e.g. the output of kpr adapt)")
    p.add_argument("--global", dest="global_model", required=True, type=Path, metavar="ONNX",
                   help="global person-ReID ONNX model (e.g. person-reidentification-retail-0248.onnx)")
    p.add_argument("--out", required=True, type=Path, help="hybrid model folder to create (must not exist)")
    p.add_argument("--holistic-weight", type=_positive(float), default=DEFAULT_HOLISTIC_WEIGHT, metavar="W",
                   help="times the whole-body distance counts among the visible parts' distances "
                        f"(default {DEFAULT_HOLISTIC_WEIGHT:g}; KPR alone counts its own once)")
    _model_input_option(p)
    p.set_defaults(func=cmd_hybrid)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kpr` console script."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    _quiet_prefect()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("kpr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kpr list | head` closed the pipe: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit-time flush would fail again
        return EXIT_ERROR
    except Exception as exc:
        if is_user_error(exc):
            print(f"kpr {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
