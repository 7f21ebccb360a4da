"""`kpr case` and `kpr search --case`: named investigations recorded in the store, shown as a timeline and exported
as an evidence bundle.

A search run with a case records two events: the query as asked and the results it printed (each
with its camera, time, video, frame and box, so the case stays readable even if the store changes).
Marks and notes are events too. storage.cases keeps them, pipelines.case_timeline prints them and
pipelines.case_bundle writes the bundle.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.case_bundle import export_case
from pipelines.case_timeline import list_cases, show_case
from pipelines.errors import UserError
from storage import SearchHit, Store
from storage.cases import Cases
from workers.crops import thumbnail_jpeg

if TYPE_CHECKING:  # the query modules load the model code, which listing and showing cases do not need
    from pipelines.query import Query, QueryResult

def _image_record(image: bytes | Path) -> dict:
    """What identifies a query image: its file name when it came from a file, and the SHA-256 of its bytes."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    record = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return record if isinstance(image, bytes) else {"file": str(image), **record}


def query_payload(query: Query, result: QueryResult) -> dict:
    """The query as asked (ids, filters, parts, prompt, options), the image by name and digest, and the picture that
    was embedded (a small JPEG) when there was one."""
    payload = {f.name: getattr(query, f.name) for f in dataclasses.fields(query)}
    image, prompt = payload.pop("image"), payload.pop("prompt")
    payload = {key: list(value) if isinstance(value, tuple) else value for key, value in payload.items()}
    payload["by"] = result.kind
    if image is not None:
        payload["image"] = _image_record(image)
    if prompt is not None:
        payload["prompt"] = {"positive": None if prompt.positive is None else prompt.positive.tolist(),
                             "negative": prompt.negative.tolist(), "source": prompt.source}
    if result.crop is not None:
        payload["crop_jpeg"] = base64.b64encode(thumbnail_jpeg(result.crop)).decode()
    return payload


def _hit_record(rank: int, hit: SearchHit) -> dict:
    """One result as a case keeps it: where and when the detection was seen, and how close it was."""
    return {"rank": rank, "detection_id": hit.detection_id, "track_id": hit.track_id, "video_id": hit.video_id,
            "camera_id": hit.camera_id, "frame_index": int(hit.frame_index), "timestamp": float(hit.timestamp),
            "bbox": [float(v) for v in hit.bbox], "distance": float(hit.distance)}


def results_payload(result: QueryResult, model_id: str | None) -> dict:
    """The results a search showed, best first: people (their closest detection, span and matched count) or
    detections, with the model that ranked them."""
    if result.people is None:
        hits = [_hit_record(rank, hit) for rank, hit in enumerate(result.hits, 1)]
    else:
        hits = [{**_hit_record(rank, p.best), "t_start": p.t_start, "t_end": p.t_end, "matched": p.matched,
                 "detections": p.detections} for rank, p in enumerate(result.people, 1)]
    return {"by": "detection" if result.people is None else "person", "model_id": model_id, "hits": hits,
            "no_close_match_above": result.no_close_match_above}


def marks_payload(same: Sequence[str], rejected: Sequence[str], cleared: Sequence[str] = ()) -> dict:
    """Results marked as the same person as the query, or as not this person, by detection id; ``cleared``: marks
    taken back (listed only when there are some)."""
    payload = {"same": list(dict.fromkeys(same)), "not": list(dict.fromkeys(rejected))}
    return {**payload, "cleared": list(dict.fromkeys(cleared))} if cleared else payload


def check_marked(store: Store, ids: Sequence[str]) -> None:
    """Refuse detection ids the store does not hold (UserError naming the first)."""
    rows = store.detections_by_ids(list(ids), ["detection_id"])
    held = set(rows["detection_id"].to_pylist()) if rows.num_rows else set()
    unknown = [i for i in ids if i not in held]
    if unknown:
        raise UserError(f"unknown detection id {unknown[0]!r}: mark the ids of the results shown")


def search_events(store: Store, query: Query, result: QueryResult) -> list[tuple[str, dict]]:
    """What a case records of one search: the marks it searched with (if any), the query, and the results shown."""
    model = store.model()
    marks = [("marks", marks_payload(query.same, query.rejected))] if query.same or query.rejected else []
    return [*marks, ("query", query_payload(query, result)),
            ("results", results_payload(result, model and model["model_id"]))]


def record_search(name: str, store: Store, query: Query, result: QueryResult) -> None:
    """Record a search and the results it showed in case ``name`` (created on first use), saying so on stderr."""
    cases = Cases.open(store.uri)
    new = not cases.exists(name)
    cases.append(name, search_events(store, query, result))
    print(f"{'created case' if new else 'recorded in case'} {name.strip()!r} ({len(result.hits)} results)",
          file=sys.stderr)


def run_case_command(args: argparse.Namespace) -> int:
    """`kpr case list|show|note|mark|export`."""
    cases = Cases.open(args.db)
    if args.action in ("list", "show"):
        return list_cases(cases) if args.action == "list" else show_case(cases, args.name)
    if args.action == "note":
        cases.events(args.name)  # a note goes to an existing case: a typo must not start a new one
        cases.append(args.name, [("note", {"text": args.text})])
        print(f"noted in case {args.name.strip()!r}", file=sys.stderr)
        return 0
    if args.action == "mark":
        if not args.same and not args.rejected:
            raise UserError("give --same ID or --not ID (repeatable)")
        cases.events(args.name)
        check_marked(Store.open(args.db, create=False), [*(args.same or ()), *(args.rejected or ())])
        cases.append(args.name, [("marks", marks_payload(args.same or (), args.rejected or ()))])
        print(f"marks recorded in case {args.name.strip()!r}", file=sys.stderr)
        return 0
    out = export_case(cases, Store.open(args.db, create=False), args.name, args.out)
    print(f"wrote {out / 'index.html'} ({out / 'manifest.json'} lists every file's SHA-256)")
    return 0
