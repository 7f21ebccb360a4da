"""`kpr list` and `kpr info`: what a store holds, printed as tables or JSON, so a user finds an id to search with.

The reads are storage.catalog's; this module only chooses what to show, formats it and writes thumbnails.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from pipelines.times import iso_utc, utc_text
from storage import Store
from storage.schema import describe_model
from storage.catalog import (CameraSummary, CatalogFilters, IdentitySummary, Page, StoreSummary, TrackletSummary,
                             VideoSummary, is_empty, list_cameras, list_identities, list_tracklets, list_videos,
                             summarize, tracklet_thumbnails)

LISTINGS = {"cameras": list_cameras, "videos": list_videos, "tracklets": list_tracklets, "identities": list_identities}
# The listings whose rows have a thumbnail (--thumbnails), and the field that names each row's file.
THUMBNAIL_KEYS = {"tracklets": "track_id", "identities": "identity_id"}
SHORT_ID = 12  # characters of a video id shown in tables (tracklet ids start with as many)


def _when(timestamp: float | None) -> str:
    """A UTC date and time, "-" when unknown."""
    return "-" if timestamp is None else utc_text(timestamp)


def _duration(seconds: float | None) -> str:
    """Seconds as H:MM:SS ("-" if unknown)."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _size(count: int | None) -> str:
    """A byte count in the largest unit that keeps it >= 1."""
    if count is None:
        return "-"
    value, unit = float(count), "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> None:
    """Rows under their headers in aligned columns (the ``numeric`` columns aligned right)."""
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]
    for line in (headers, *rows):
        cells = [cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))]
        print("  ".join(cells).rstrip())


def _camera_cells(row: CameraSummary) -> list[str]:
    return [row.camera_id, str(row.videos), str(row.failed_videos), str(row.detections), str(row.tracklets),
            _when(row.first_seen), _when(row.last_seen)]


def _video_cells(row: VideoSummary) -> list[str]:
    return [row.video_id[:SHORT_ID], row.camera_id, _when(row.start_time), _duration(row.duration),
            str(row.detections), row.status, row.error or ""]


def _tracklet_cells(row: TrackletSummary) -> list[str]:
    return [row.track_id, row.camera_id, row.video_id[:SHORT_ID], _when(row.t_start), _when(row.t_end),
            str(row.detections), row.best_detection_id or "-"]


def _identity_cells(row: IdentitySummary) -> list[str]:
    return [row.identity_id, str(row.tracklets), ",".join(row.cameras), str(row.detections), _when(row.first_seen),
            _when(row.last_seen), row.best_track_id, f"{row.confidence:.3f}"]


TABLES = {
    "cameras": (("camera", "videos", "failed", "detections", "tracklets", "first seen (UTC)", "last seen (UTC)"),
                _camera_cells, (1, 2, 3, 4)),
    "videos": (("video", "camera", "start (UTC)", "duration", "detections", "status", "error"), _video_cells, (3, 4)),
    "tracklets": (("tracklet", "camera", "video", "start (UTC)", "end (UTC)", "detections", "best detection"),
                  _tracklet_cells, (5,)),
    "identities": (("identity", "tracklets", "cameras", "detections", "first seen (UTC)", "last seen (UTC)",
                    "best tracklet", "confidence"), _identity_cells, (1, 3, 7)),
}
# The epoch-seconds fields of each listing's rows, given in JSON also as ISO 8601 UTC ("<field>_utc").
TIME_FIELDS = {"cameras": ("first_seen", "last_seen"), "videos": ("start_time",), "tracklets": ("t_start", "t_end"),
               "identities": ("first_seen", "last_seen")}


def _file_name(row_id: str) -> str:
    """A tracklet or identity id as a safe file name (characters other than letters, digits, '.', '_' and '-' become
    '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", row_id).lstrip(".") or "_"


def _thumbnails(store: Store, what: str, rows: list) -> dict[str, bytes]:
    """The best thumbnail of each listed tracklet, or the representative one (its best tracklet's) of each identity,
    by row id."""
    if what == "tracklets":
        return tracklet_thumbnails(store, [row.track_id for row in rows])
    best = tracklet_thumbnails(store, [row.best_track_id for row in rows])
    return {row.identity_id: best[row.best_track_id] for row in rows if row.best_track_id in best}


def _write_thumbnails(images: dict[str, bytes], listed: int, what: str, folder: Path) -> dict[str, str]:
    """Each row's thumbnail (``images`` by row id) as folder/<row id>.jpg; returns the path written per row."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for row_id, jpeg in images.items():
        path = folder / f"{_file_name(row_id)}.jpg"
        path.write_bytes(jpeg)
        written[row_id] = str(path)
    missing = listed - len(written)
    print(f"wrote {len(written)} thumbnail(s) to {folder}" + (f" ({missing} {what} have none)" if missing else ""),
          file=sys.stderr)
    return written


def _json_row(row, times: Sequence[str], thumbnails: dict[str, str] | None, key: str | None) -> dict:
    """A listed row as a JSON object: its fields, its times also as ISO 8601 UTC, and its thumbnail file if written
    (``key``: the field that names it)."""
    data = asdict(row)
    data.update({f"{name}_utc": None if data[name] is None else iso_utc(data[name]) for name in times})
    if thumbnails is not None:
        data["thumbnail"] = thumbnails.get(data[key])
    return data


def show_list(store: Store, what: str, filters: CatalogFilters, limit: int, offset: int,
              thumbnails: Path | None = None, as_json: bool = False) -> int:
    """Print one page of the store's cameras, videos, tracklets or identities (and write the thumbnails of tracklets
    or identities)."""
    if is_empty(store) and not as_json:
        print(f"the store at {store.uri} is empty: nothing was ingested into it yet")
        return 0
    found: Page | None = LISTINGS[what](store, filters, limit, offset)
    if found is None and not as_json:
        print(f"no identities yet: run kpr link --db {store.uri}")
        return 0
    page = found or Page(offset=offset)
    written = None
    if thumbnails is not None:
        written = _write_thumbnails(_thumbnails(store, what, page.rows), len(page.rows), what, thumbnails)
    if as_json:
        rows = [_json_row(row, TIME_FIELDS[what], written, THUMBNAIL_KEYS.get(what)) for row in page.rows]
        linked = {} if what != "identities" else {"linked": found is not None}
        print(json.dumps({"store": store.uri, "listing": what, **linked, "total": page.total, "offset": page.offset,
                          "remaining": page.remaining, "rows": rows}, indent=2))
        return 0
    if not page.rows:
        print(f"no {what} match the filters" if page.total == 0 else
              f"no {what} from --offset {offset} on ({page.total} match the filters)")
        return 0
    headers, cells, numeric = TABLES[what]
    _print_table(headers, [cells(row) for row in page.rows], numeric)
    if page.remaining:
        print(f"{page.remaining} more {what}: use --offset {offset + len(page.rows)} or a larger --limit")
    if what in THUMBNAIL_KEYS:
        option = "tracklet TRACKLET" if what == "tracklets" else "identity IDENTITY"
        print(f"search with one: kpr search --db {store.uri} --{option}")
    return 0


def _info_lines(summary: StoreSummary) -> list[str]:
    """The store summary as `kpr info` prints it."""
    model = summary.model
    rows = {name: stats["rows"] for name, stats in summary.tables.items()}
    span = summary.time_range
    where = "local folder" if summary.disk_bytes is not None else "object store"
    lines = [
        f"store:       {summary.uri} ({where}" + (f", {_size(summary.disk_bytes)} on disk)" if summary.disk_bytes
                                                  is not None else ")"),
        "schema:      version " + ", ".join(sorted({str(stats["schema_version"]) for stats in summary.tables.values()}))
        + f" (this code reads {' or '.join(map(str, summary.readable_versions))}, writes {summary.schema_version} "
        f"into new tables)",
        "model:       " + ("none recorded yet" if model is None else describe_model(model)),
        "rows:        " + ", ".join(f"{name} {rows.get(name, 0)}" for name in ("detections", "tracklets", "videos")),
        f"cameras:     {len(summary.cameras)}" + (f": {', '.join(summary.cameras)}" if summary.cameras else ""),
        "cameras file: " + (summary.cameras_file or "none recorded (kpr ingest records the one it reads)"),
        "videos:      " + (", ".join(f"{count} {status}" for status, count in sorted(summary.videos_by_status.items()))
                           or "none"),
        "time range:  " + ("no detections" if span is None else
                           f"{utc_text(span[0])} .. {utc_text(span[1])} UTC ({_duration(span[1] - span[0])})"),
        "identities:  " + ("none yet (kpr link groups the tracklets into people across cameras)"
                           if summary.identities is None else f"{summary.identities['identities']}, "
                           f"{summary.identities['across_cameras']} seen by more than one camera"),
        "indexes:" + ("" if summary.indexes else "     none (kpr maintain builds them)"),
    ]
    for name, index in summary.indexes.items():
        lines.append(f"  {name:<24} {index['type']:<10} {index['indexed_rows']} indexed, "
                     f"{index['unindexed_rows']} unindexed")
    lines.append("tables:")
    for name, stats in summary.tables.items():
        lines.append(f"  {name:<12} version {stats['version']} ({stats['versions']} kept), {stats['fragments']} "
                     f"fragment(s), {_size(stats['bytes'])}, schema version {stats['schema_version']}")
    return lines


def show_info(store: Store, as_json: bool = False) -> int:
    """Print the store summary (`kpr info`)."""
    if is_empty(store) and not as_json:
        print(f"the store at {store.uri} is empty: nothing was ingested into it yet")
        return 0
    summary = summarize(store)
    if as_json:
        data = asdict(summary)
        span = summary.time_range
        data["time_range_utc"] = None if span is None else [iso_utc(span[0]), iso_utc(span[1])]
        print(json.dumps(data, indent=2))
        return 0
    print("\n".join(_info_lines(summary)))
    return 0
