"""A case exported as a self-contained evidence bundle: an offline index.html, case.json with every event, the
thumbnails and full frames (box drawn) of every result, provenance per result, and a SHA-256 manifest.

Layout: index.html, case.json, manifest.json, thumbs/NNNN.jpg (stored thumbnails), frames/NNNN.jpg
(the archived frame with the box), queries/NNN.jpg (pictures that image queries embedded). A result
whose video cannot be read any more, or whose detection left the store, is stated as such in the
page and in case.json instead of failing the export.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.case_timeline import event_lines, hit_time
from pipelines.errors import UserError
from pipelines.html_report import PAGE_STYLE
from pipelines.times import iso_utc, utc_text
from storage import Store
from storage.cases import CaseEvent, Cases
from workers.errors import DecodeError
from workers.frames import frames_with_boxes

MANIFEST = "manifest.json"
_EXTRA_STYLE = """
figure img.frame{height:auto;max-width:100%} figure.same{border-color:#2a2} figure.not{border-color:#d33}
.event{margin:1em 0;padding:.5em 1em;background:#fff;border-left:4px solid #36c}
.missing{color:#b11} .meta{color:#666;font-size:12px} pre{white-space:pre-wrap}
"""


@dataclass
class Evidence:
    """What the bundle holds for one detection: its files (relative paths) and provenance, or why a file is missing."""

    detection_id: str
    provenance: dict = field(default_factory=dict)
    thumbnail: str | None = None
    frame: str | None = None
    problems: list[str] = field(default_factory=list)


def _detection_ids(events: list[CaseEvent]) -> list[str]:
    """Every detection a case mentions (queried, shown, marked), each once, in order of first mention."""
    ids = []
    for event in events:
        payload = event.payload
        if event.kind == "query" and payload.get("detection_id"):
            ids.append(payload["detection_id"])
        elif event.kind == "results":
            ids += [hit["detection_id"] for hit in payload["hits"]]
        elif event.kind == "marks":
            ids += [*payload["same"], *payload["not"]]
    return list(dict.fromkeys(ids))


def _recorded_hits(events: list[CaseEvent]) -> dict[str, dict]:
    """The first recorded result of each detection (its video, frame and box as seen when it was shown, and the
    model that ranked it)."""
    hits: dict[str, dict] = {}
    for event in events:
        if event.kind == "results":
            for hit in event.payload["hits"]:
                hits.setdefault(hit["detection_id"], {**hit, "model_id": event.payload.get("model_id")})
    return hits


def _gather(store: Store, events: list[CaseEvent], schema_version: int | None, out: Path) -> dict[str, Evidence]:
    """Write each mentioned detection's thumbnail and boxed frame under ``out``; its Evidence (provenance naming the
    store's ``schema_version``) by detection id."""
    ids = _detection_ids(events)
    recorded = _recorded_hits(events)
    columns = ["detection_id", "video_id", "camera_id", "frame_index", "timestamp", "bbox", "thumbnail", "model_id",
               "track_id"]
    stored = {row["detection_id"]: row for row in store.detections_by_ids(ids, columns).to_pylist()} if ids else {}
    uris = {row["video_id"]: row["uri"] for row in store.video_rows()}
    (out / "thumbs").mkdir()
    (out / "frames").mkdir()
    evidence, wanted = {}, {}
    for number, detection_id in enumerate(ids, 1):
        row = stored.get(detection_id) or recorded.get(detection_id)
        item = evidence[detection_id] = Evidence(detection_id)
        if detection_id not in stored:
            item.problems.append("the detection is no longer in the store")
        if row is None:
            continue
        uri = uris.get(row["video_id"])
        item.provenance = {"detection_id": detection_id, "video_id": row["video_id"], "video_uri": uri,
                           "camera_id": row["camera_id"], "frame_index": row["frame_index"],
                           "timestamp": row["timestamp"], "time_utc": iso_utc(row["timestamp"]),
                           "bbox_xywh": list(row["bbox"]), "track_id": row.get("track_id"),
                           "model_id": row.get("model_id"), "store_schema_version": schema_version}
        if row.get("thumbnail"):
            item.thumbnail = f"thumbs/{number:04d}.jpg"
            (out / item.thumbnail).write_bytes(row["thumbnail"])
        if uri is None:
            item.problems.append(f"video {row['video_id']} is not in the store's videos table")
            continue
        wanted.setdefault(uri, []).append((number, item, row["frame_index"], row["bbox"]))
    _write_frames(wanted, out)
    return evidence


def _write_frames(wanted: dict[str, list[tuple[int, Evidence, int, list]]], out: Path) -> None:
    """Decode each video's wanted frames in one pass, draw their boxes and write them under ``out``/frames."""
    done, total = 0, sum(len(items) for items in wanted.values())
    for uri, items in wanted.items():
        for (number, item, _, _), jpeg in zip(items, frames_with_boxes(uri, [(i, box) for _, _, i, box in items])):
            if isinstance(jpeg, DecodeError):
                item.problems.append(f"the frame cannot be read from the archived video: {jpeg}")
                continue
            item.frame = f"frames/{number:04d}.jpg"
            (out / item.frame).write_bytes(jpeg)
        done += len(items)
        print(f"\rdecoding frames: {done}/{total}", end="", file=sys.stderr)
    if total:
        print(file=sys.stderr)


def _query_pictures(events: list[CaseEvent], out: Path) -> dict[str, str]:
    """Write the picture each image query embedded; its relative path by query event id."""
    pictures = {}
    for event in events:
        crop = event.payload.get("crop_jpeg") if event.kind == "query" else None
        if crop:
            (out / "queries").mkdir(exist_ok=True)
            pictures[event.event_id] = f"queries/{len(pictures) + 1:03d}.jpg"
            (out / pictures[event.event_id]).write_bytes(base64.b64decode(crop))
    return pictures


def latest_marks(events: list[CaseEvent]) -> dict[str, str]:
    """The latest mark of each marked detection: "same" or "not" (a mark taken back is gone)."""
    marks = {}
    for event in events:
        if event.kind == "marks":
            marks.update({i: "same" for i in event.payload["same"]})
            marks.update({i: "not" for i in event.payload["not"]})
            for cleared in event.payload.get("cleared", ()):
                marks.pop(cleared, None)
    return marks


def _figure(hit: dict, item: Evidence, mark: str | None) -> str:
    """One result as an HTML figure: thumbnail, frame with the box, what and when, provenance, problems."""
    esc = html.escape
    parts = [f'<img src="{esc(item.thumbnail)}" alt="thumbnail">' if item.thumbnail else ""]
    if item.frame:
        parts.append(f'<a href="{esc(item.frame)}"><img class="frame" src="{esc(item.frame)}" alt="frame"></a>')
    parts.append(f"#{hit['rank']} &middot; {hit['distance']:.4f}<br>{esc(hit['camera_id'])} &middot; {esc(hit_time(hit))} UTC"
                 f"<br>{esc(hit['detection_id'])}")
    if mark:
        parts.append(f"<br><b>{'same person' if mark == 'same' else 'not this person'}</b>")
    parts += [f'<div class="missing">{esc(problem)}</div>' for problem in item.problems]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in item.provenance.items())
    parts.append(f"<details><summary>provenance</summary><table>{rows}</table></details>")
    return f'<figure class="hit {mark or ""}" style="max-width:360px">{"".join(parts)}</figure>'


def _page(case: dict, events: list[CaseEvent], evidence: dict[str, Evidence], pictures: dict[str, str]) -> str:
    """The bundle's index.html: the case header, then every event in order with its results."""
    esc, marks = html.escape, latest_marks(events)
    body = [f"<h1>Case {esc(case['name'])}</h1>",
            f'<p class="meta">{esc(case["case_id"])} &middot; exported {esc(case["exported_utc"])} from '
            f'{esc(case["store"])} &middot; model {esc(str(case["model_id"]))} &middot; store schema version '
            f'{esc(str(case["store_schema_version"]))} &middot; every file is listed with its SHA-256 in {MANIFEST}</p>']
    unreadable = sorted({p for item in evidence.values() for p in item.problems})
    if unreadable:
        body.append('<p class="missing">Not everything could be included:</p><ul class="missing">'
                    + "".join(f"<li>{esc(p)}</li>" for p in unreadable) + "</ul>")
    for event in events:
        head = f"{utc_text(event.at)} UTC &middot; {esc(event.user or '?')}@{esc(event.host or '?')}"
        if event.kind == "results":
            hits = event.payload["hits"]
            figures = "".join(_figure(hit, evidence[hit["detection_id"]], marks.get(hit["detection_id"])) for hit in hits)
            unit = "people" if event.payload.get("by") == "person" else "detections"
            body.append(f'<div class="event"><h2>Results: {len(hits)} {unit}, best first</h2>'
                        f'<div class="row">{figures or "<p>no results</p>"}</div></div>')
            continue
        picture = ""
        if event.event_id in pictures:
            picture = f'<figure class="query"><img src="{esc(pictures[event.event_id])}" alt="query"></figure>'
        elif event.kind == "query" and event.payload.get("detection_id") in evidence:
            shown = evidence[event.payload["detection_id"]]
            picture = f'<figure class="query"><img src="{esc(shown.thumbnail)}" alt="query"></figure>' if shown.thumbnail else ""
        text = "<br>".join(esc(line) for line in event_lines(event))
        body.append(f'<div class="event"><p class="meta">{head}</p><pre>{text}</pre><div class="row">{picture}</div></div>')
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Case {esc(case['name'])}</title>"
            f"<style>{PAGE_STYLE}{_EXTRA_STYLE}</style></head><body>{''.join(body)}</body></html>")


def _manifest(out: Path) -> dict:
    """SHA-256 of every file of the bundle but the manifest itself, by relative path."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {"algorithm": "sha256",
            "files": {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}}


def export_case(cases: Cases, store: Store, name: str, out: Path) -> Path:
    """Write case ``name``'s evidence bundle into the new or empty folder ``out``; returns the folder."""
    events = cases.events(name)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder: export into a new one")
    out.mkdir(parents=True, exist_ok=True)
    schema_version = store.table_stats().get("detections", {}).get("schema_version")
    evidence = _gather(store, events, schema_version, out)
    pictures = _query_pictures(events, out)
    model = store.model()
    case = {"name": events[0].case_name, "case_id": events[0].case_id, "store": store.uri,
            "exported_utc": iso_utc(time.time()), "model_id": model and model["model_id"],
            "store_schema_version": schema_version}
    document = {"case": case,
                "events": [{"event_id": e.event_id, "at": e.at, "at_utc": iso_utc(e.at), "kind": e.kind,
                            "host": e.host, "user": e.user, "payload": e.payload} for e in events],
                "evidence": {i: {"thumbnail": item.thumbnail, "frame": item.frame, "problems": item.problems,
                                 "provenance": item.provenance} for i, item in evidence.items()},
                "query_pictures": pictures}
    (out / "case.json").write_text(json.dumps(document, indent=1, sort_keys=True))
    (out / "index.html").write_text(_page(case, events, evidence, pictures))
    (out / MANIFEST).write_text(json.dumps(_manifest(out), indent=1, sort_keys=True))
    return out
