"""`kpr identity show`: one global identity as lines (its tracklets, cameras and history of runs and hand edits)."""
from __future__ import annotations

import json

from pipelines.times import span_text, utc_text


def _event_text(event: dict) -> str:
    """One history event as a line's tail: what changed, by whom and why."""
    change = event["change"]
    if event.get("by") == "hand":
        detail = (f"merged from {', '.join(event['from'])}" if "from" in event and change == "merge"
                  else f"split off {event['from']}" if "from" in event else f"split, part into {event['into']}")
        who = f" by {event['user']}" if event.get("user") else ""
        note = f": {event['note']}" if event.get("note") else ""
        return f"{detail}{who}{note}"
    moved = f", {event['joined']} joined, {event['left']} left" if "joined" in event else ""
    return f"{change} by linking run {event['run_id'][:8]} ({event['tracklets']} tracklets{moved})"


def identity_lines(row: dict) -> list[str]:
    """The lines `kpr identity show` prints for an identities-table row."""
    tracklets, cameras = row["tracklets"], row["cameras"]
    lines = [f"identity {row['identity_id']}: {len(tracklets)} tracklet(s) on {len(cameras)} camera(s), "
             f"{utc_text(row['first_seen'])} - {utc_text(row['last_seen'])} UTC; best tracklet {row['best_track_id']}",
             "cameras (first - last seen, UTC):"]
    lines += [f"  {c['camera_id']}: {span_text(c['first_seen'], c['last_seen'])}" for c in cameras]
    lines.append("tracklets (UTC, link confidence):")
    lines += [f"  {t['track_id']}  {t['camera_id']}  {span_text(t['t_start'], t['t_end'])}  {t['confidence']:.2f}"
              for t in tracklets]
    lines.append("history:")
    lines += [f"  {utc_text(event['at'])}  {_event_text(event)}" for event in json.loads(row["history"])]
    return lines
