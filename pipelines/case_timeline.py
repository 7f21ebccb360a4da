"""A case as text: its events as timeline lines (`kpr case show`, the evidence bundle's page) and the list of cases."""
from __future__ import annotations

from pipelines.times import span_text, utc_text
from storage.cases import CaseEvent, Cases

# How many results of each search `kpr case show` lists.
SHOWN_RESULTS = 3


def _query_text(payload: dict) -> str:
    """A query event in one line: what was searched for and with which options."""
    if payload.get("detection_id"):
        what = f"detection {payload['detection_id']}"
    elif payload.get("track_id"):
        what = f"tracklet {payload['track_id']}"
    elif payload.get("identity_id"):
        what = f"identity {payload['identity_id']}"
    else:
        image = payload.get("image", {})
        what = f"image {image.get('file', 'upload')} (sha256 {image.get('sha256', '?')[:12]})"
    options = [f"k={payload.get('k')}"]
    for key in ("cameras", "parts", "since", "until"):
        if payload.get(key):
            value = payload[key]
            options.append(f"{key} {', '.join(value) if isinstance(value, list) else value}")
    if payload.get("prompt"):
        options.append("keypoint prompt")
    if payload.get("same") or payload.get("rejected"):
        options.append(f"feedback: {len(payload.get('same', []))} same, {len(payload.get('rejected', []))} not")
    for flag in ("rerank", "same_camera", "global_only", "detections"):
        if payload.get(flag):
            options.append(flag.replace("_", "-"))
    return f"{what}; {'; '.join(options)}"


def hit_time(hit: dict) -> str:
    """When a recorded result was seen, in UTC: a person's time span, or a detection's date and time."""
    return span_text(hit["t_start"], hit["t_end"]) if "t_start" in hit else utc_text(hit["timestamp"])


def _result_line(hit: dict) -> str:
    """One result: rank, distance, camera, date and time (a person's span), detection id."""
    return f"{hit['rank']:>3}  {hit['distance']:.4f}  {hit['camera_id']}  {hit_time(hit)}  {hit['detection_id']}"


def event_lines(event: CaseEvent) -> list[str]:
    """An event of a case as timeline lines (the first names the kind; results list their top few)."""
    payload = event.payload
    if event.kind == "query":
        return [f"query    {_query_text(payload)}"]
    if event.kind == "results":
        hits = payload["hits"]
        unit = "people" if payload.get("by") == "person" else "detections"
        head = f"results  {len(hits)} {unit}" + (f", top {min(len(hits), SHOWN_RESULTS)}:" if hits else " (no match)")
        return [head, *(f"           {_result_line(hit)}" for hit in hits[:SHOWN_RESULTS])]
    if event.kind == "marks":
        cleared = f"; taken back: {', '.join(payload['cleared'])}" if payload.get("cleared") else ""
        return [f"marks    same person: {', '.join(payload['same']) or '-'}; not this person: "
                f"{', '.join(payload['not']) or '-'}{cleared}"]
    return [f"note     {payload['text']}"]


def _who(event: CaseEvent) -> str:
    """user@host of an event, as far as known."""
    return f"{event.user or '?'}@{event.host or '?'}"


def show_case(cases: Cases, name: str) -> int:
    """Print one case's timeline: a header, then each event with its UTC date and time."""
    events = cases.events(name)
    counts = {kind: sum(e.kind == kind for e in events) for kind in ("query", "marks", "note")}
    print(f"case {events[0].case_name!r} ({events[0].case_id}): {counts['query']} searches, {counts['marks']} marks, "
          f"{counts['note']} notes; opened {utc_text(events[0].at)} UTC by {_who(events[0])}, "
          f"last {utc_text(events[-1].at)} UTC")
    for event in events:
        lines = event_lines(event)
        stamp = "" if event.kind == "results" else f"{utc_text(event.at)}  "
        print(f"{stamp:<21}{lines[0]}" + ("" if event.kind == "results" else f"  [{_who(event)}]"))
        for line in lines[1:]:
            print(f"{'':<21}{line}")
    return 0


def list_cases(cases: Cases) -> int:
    """Print every case of the store, most recently active first, with its first and last activity and counts."""
    summaries = cases.summaries()
    if not summaries:
        print(f"no cases in the store at {cases.uri} (kpr search ... --case NAME starts one)")
        return 0
    name_w = max(4, *(len(s.name) for s in summaries))
    print(f"{'case':<{name_w}}  {'opened (UTC)':<19}  {'last activity (UTC)':<19}  searches  marks  notes")
    for s in summaries:
        print(f"{s.name:<{name_w}}  {utc_text(s.created_at):<19}  {utc_text(s.last_at):<19}  "
              f"{s.counts.get('query', 0):>8}  {s.counts.get('marks', 0):>5}  {s.counts.get('note', 0):>5}")
    return 0
