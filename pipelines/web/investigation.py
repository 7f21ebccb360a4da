"""The web app's investigation: a case's record of searches and marks, reopening a case, the person's journey and the
case's evidence bundle as a zip; the CLI's case and journey code does the work (pipelines.cases, pipelines.journey)."""
from __future__ import annotations

import io
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from pipelines.case_bundle import export_case, latest_marks
from pipelines.cases import check_marked, marks_payload, search_events
from pipelines.errors import UserError
from pipelines.journey import build_journey, journey_lines, journey_rows, person_sightings
from pipelines.journey_page import map_svg, timeline_svg
from pipelines.query import Query, QueryResult
from pipelines.times import utc_text
from storage import Store
from storage.cases import Cases, check_name
from workers.cameras import Cameras

MARKS_MAX = 200  # marks one request may send: feedback reads each marked detection's embedding
JOURNEY_HITS = 20  # people a journey without confirmed sightings takes from the calibrated search
# What a reopened case restores of its last query: the query and its filters and options, as the page sends them.
RESTORED = ("detection_id", "track_id", "identity_id", "cameras", "parts", "since", "until", "min_visibility", "k", "rerank",
            "same_camera", "global_only", "detections")


def check_marks(same: Sequence[str], rejected: Sequence[str]) -> None:
    """Refuse more than MARKS_MAX marks in one request."""
    if len(same) + len(rejected) > MARKS_MAX:
        raise UserError(f"at most {MARKS_MAX} marked results per search, got {len(same) + len(rejected)}")


class Investigation:
    """The cases of the served store and what the page does with them."""

    def __init__(self, store: Store, cameras: Cameras) -> None:
        self.store = store
        self.cameras = cameras
        self.cases = Cases.open(store.uri)

    def record_search(self, name: str, query: Query, result: QueryResult) -> None:
        """Record a search, the marks it searched with and the results it showed in case ``name`` (new: started)."""
        self.cases.append(name, search_events(self.store, query, result))

    def record_marks(self, name: str, same: Sequence[str], rejected: Sequence[str], cleared: Sequence[str]) -> dict:
        """Record a change of marks in case ``name``: ids marked same or not, or ``cleared`` (taken back); unknown ids
        are refused (UserError)."""
        if not same and not rejected and not cleared:
            raise UserError("give the marked results: same, not or cleared detection ids")
        check_marks(same, rejected)
        check_marked(self.store, [*same, *rejected, *cleared])
        self.cases.append(name, [("marks", marks_payload(same, rejected, cleared))])
        return {"case": check_name(name), "marks": self._marks(name)}

    def list_cases(self) -> dict:
        """The store's cases, most recently active first, with their first and last activity and counts."""
        return {"cases": [{"name": s.name, "created_utc": utc_text(s.created_at), "last_utc": utc_text(s.last_at),
                           "searches": s.counts.get("query", 0), "marks": s.counts.get("marks", 0)}
                          for s in self.cases.summaries()]}

    def reopen(self, name: str) -> dict:
        """What reopening case ``name`` restores: its last query with its filters and options (None: no search yet),
        and its marks with where and when each marked detection was seen; NotFoundError for an unknown case."""
        events = self.cases.events(name)
        queries = [e.payload for e in events if e.kind == "query"]
        last = None if not queries else {key: queries[-1].get(key) for key in RESTORED}
        if last is not None:
            last["image"] = "image" in queries[-1]
        return {"case": events[0].case_name, "query": last, "marks": self._marks(name, events)}

    def _marks(self, name: str, events: list | None = None) -> list[dict]:
        """The case's current marks, each with its detection's camera, time and track (those the store still holds)."""
        marks = latest_marks(self.cases.events(name) if events is None else events)
        rows = self.store.detections_by_ids(list(marks), ["detection_id", "camera_id", "timestamp", "track_id"])
        seen = {row["detection_id"]: row for row in rows.to_pylist()} if rows.num_rows else {}
        return [{**seen[i], "mark": mark, "time_utc": utc_text(seen[i]["timestamp"])}
                for i, mark in marks.items() if i in seen]

    def journey(self, query_id: str, same: Sequence[str]) -> dict:
        """The journey of the person of ``query_id`` (a tracklet or detection) and the ``same`` confirmed sightings:
        its rows, its lines, the timeline and (with camera positions) the map as SVG."""
        check_marks(same, ())
        sightings, chosen = person_sightings(self.store, query_id, same, JOURNEY_HITS)
        journey = build_journey(sightings, self.cameras)
        return {"chosen": chosen, **journey_rows(journey, self.cameras), "lines": journey_lines(journey, self.cameras),
                "timeline_svg": timeline_svg(journey, self.cameras), "map_svg": map_svg(journey, self.cameras)}

    def export_zip(self, name: str) -> tuple[str, bytes]:
        """Case ``name``'s evidence bundle (pipelines.case_bundle) as a zip: (file name, bytes)."""
        stem = "case-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", check_name(name)).strip("-.") or "case")
        with tempfile.TemporaryDirectory(prefix="kpr-case-") as folder:
            bundle = export_case(self.cases, self.store, name, Path(folder) / stem)
            data = io.BytesIO()
            with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
                    archive.write(path, f"{stem}/{path.relative_to(bundle).as_posix()}")
        return f"{stem}.zip", data.getvalue()
