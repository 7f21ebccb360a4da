"""The journey as a self-contained HTML page: one lane per camera along a shared time axis with the thumbnails in
time order, the transits between cameras as labelled arrows, a camera map when the cameras file gives positions,
and a table of the sightings (local time and UTC) with the transits between them. Inline SVG and CSS only."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from pipelines.html_report import PAGE_STYLE
from pipelines.journey import (IMPOSSIBLE, NO_USUAL_TIME, PLAUSIBLE, SHARED_VIEW, TOO_FAST, Journey, conflicts_text,
                               duration_text, local_span_text, transit_text)
from pipelines.times import span_text, utc_text
from storage.sightings import Sighting
from workers.cameras import Cameras, GeoPoint, MapPoint

LABEL_W = 180  # the lane labels' column
THUMB_W, THUMB_H = 40, 80
STEP = THUMB_W + 76  # least distance between consecutive thumbnails, room for a transit's label
LANE_H = THUMB_H + 40
AXIS_H = 36
MIN_PLOT_W = 720
MAP_W, MAP_H, MAP_PAD = 460, 320, 50
# Colour and short label of each transit verdict on the timeline and the map.
VERDICT_STYLE = {PLAUSIBLE: ("#2a2", "ok"), TOO_FAST: ("#d80", "too fast"), IMPOSSIBLE: ("#c00", "impossible"),
                 NO_USUAL_TIME: ("#777", "no usual time"), SHARED_VIEW: ("#2a2", "overlapping views")}
_STYLE = """
.timeline{overflow-x:auto;background:#fff;border:1px solid #ddd} svg text{font-family:system-ui,sans-serif}
.flag{color:#c00;font-weight:600} .warn{color:#d80;font-weight:600} .note{color:#666;font-size:13px}
tr.transit td{color:#555;font-style:italic;border-top:none}
"""
ASSUMPTIONS = ("Transits compare the gap between two consecutive sightings with the cameras file's usual transit "
               "time (connects_to; a time given one way holds both ways). Cameras linked with 0 s are taken to see "
               "the same place; any other two cameras seeing the person at once is impossible.")


def _data_uri(jpeg: bytes) -> str:
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}"


def _thumb_positions(starts: list[float], left: float, right: float) -> list[float]:
    """x of each thumbnail (in time order): at its start time, pushed right so that consecutive ones are STEP apart,
    then pulled left so that the last fits before ``right``."""
    xs: list[float] = []
    for x in starts:
        xs.append(x if not xs else max(x, xs[-1] + STEP))
    for i in range(len(xs) - 1, -1, -1):
        xs[i] = min(xs[i], right - THUMB_W if i == len(xs) - 1 else xs[i + 1] - STEP)
    return [max(x, left) for x in xs]


def timeline_svg(journey: Journey, cameras: Cameras) -> str:
    """The lanes (one per camera, in order of first sighting), thumbnails, time bars, axis and transit arrows."""
    sightings = journey.sightings
    lanes = list(dict.fromkeys(s.camera_id for s in sightings))
    plot_w = max(MIN_PLOT_W, len(sightings) * STEP)
    width, height = LABEL_W + plot_w + 20, AXIS_H + len(lanes) * LANE_H
    t0, t1 = sightings[0].t_start, max(s.t_end for s in sightings)
    scale = (plot_w - THUMB_W) / max(t1 - t0, 1.0)

    def x_at(t: float) -> float:
        return LABEL_W + (t - t0) * scale

    def lane_y(camera_id: str) -> float:
        return AXIS_H + lanes.index(camera_id) * LANE_H

    parts = [f"<svg class='timeline-svg' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}'><defs>"]
    parts += [f"<marker id='arrow-{i}' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' markerHeight='7' "
              f"orient='auto'><path d='M0,0 L10,5 L0,10 z' fill='{colour}'/></marker>"
              for i, (colour, _) in enumerate(VERDICT_STYLE.values())]
    parts.append("</defs>")
    for i, camera_id in enumerate(lanes):
        display, y = cameras.display(camera_id), lane_y(camera_id)
        parts.append(f"<g class='lane' data-camera='{html.escape(camera_id)}'><rect x='0' y='{y}' width='{width}' "
                     f"height='{LANE_H}' fill='{'#f4f6fa' if i % 2 else '#fff'}'/>"
                     f"<text x='8' y='{y + 24}' font-size='14' font-weight='600'>{html.escape(display.name)}</text>"
                     f"<text x='8' y='{y + 42}' font-size='11' fill='#666'>{html.escape(camera_id)} · "
                     f"{html.escape(display.zone.key)}</text></g>")
    parts += _axis(t0, t1, x_at, height)
    xs = _thumb_positions([x_at(s.t_start) for s in sightings], LABEL_W, LABEL_W + plot_w)
    conflicted = {i for pair in journey.conflicts for i in pair}
    for i, (sighting, x) in enumerate(zip(sightings, xs)):
        parts.append(_sighting_mark(i + 1, sighting, x, lane_y(sighting.camera_id), x_at, cameras,
                                    i == journey.query, i in conflicted))
    styles = list(VERDICT_STYLE)
    for transit in journey.transits:
        if transit.verdict not in VERDICT_STYLE:
            continue
        colour, short = VERDICT_STYLE[transit.verdict]
        x1, x2 = xs[transit.origin] + THUMB_W, xs[transit.target]
        y1 = lane_y(sightings[transit.origin].camera_id) + 6 + THUMB_H / 2
        y2 = lane_y(sightings[transit.target].camera_id) + 6 + THUMB_H / 2
        gap = f"-{duration_text(transit.gap_s)}" if transit.gap_s < 0 else duration_text(transit.gap_s)
        parts.append(f"<g class='transit' data-verdict='{html.escape(transit.verdict)}'>"
                     f"<title>{html.escape(transit_text(transit))}</title>"
                     f"<line x1='{x1 + 2:.1f}' y1='{y1:.1f}' x2='{x2 - 2:.1f}' y2='{y2:.1f}' stroke='{colour}' "
                     f"stroke-width='2' marker-end='url(#arrow-{styles.index(transit.verdict)})'/>"
                     f"<text x='{(x1 + x2) / 2:.1f}' y='{(y1 + y2) / 2 - 14:.1f}' font-size='11' text-anchor='middle' "
                     f"fill='{colour}' stroke='#fff' stroke-width='3' paint-order='stroke'>"
                     f"<tspan>{html.escape(gap)}</tspan><tspan x='{(x1 + x2) / 2:.1f}' dy='12'>"
                     f"{html.escape(short)}</tspan></text></g>")
    parts.append("</svg>")
    return "".join(parts)


def _axis(t0: float, t1: float, x_at, height: float) -> list[str]:
    """The shared time axis (UTC) along the top, with light vertical rules through the lanes."""
    ticks = 1 if t1 <= t0 else 5
    marks = []
    for i in range(ticks):
        t = t0 + (t1 - t0) * i / max(ticks - 1, 1)
        text = utc_text(t) if i == 0 else utc_text(t)[11:]
        marks.append(f"<line x1='{x_at(t):.1f}' y1='{AXIS_H - 6}' x2='{x_at(t):.1f}' y2='{height}' stroke='#ddd'/>"
                     f"<text x='{x_at(t):.1f}' y='{AXIS_H - 12}' font-size='11' fill='#444'>{text}</text>")
    return [f"<text x='8' y='{AXIS_H - 12}' font-size='11' fill='#444'>time (UTC)</text>", *marks]


def _sighting_mark(number: int, sighting: Sighting, x: float, y: float, x_at, cameras: Cameras, query: bool,
                   conflicted: bool) -> str:
    """One sighting on its lane: its numbered thumbnail (at ``x``; the query's framed in orange, one seen by another
    camera at the same time dashed in red), its time bar, and a line joining them."""
    display = cameras.display(sighting.camera_id)
    title = (f"#{number} {display.name}: {local_span_text(sighting, cameras)} ({span_text(sighting.t_start, sighting.t_end)}"
             f" UTC), {sighting.detections} detection(s), {'track ' + sighting.track_id if sighting.track_id else 'no track'}"
             f"{', the query' if query else ''}")
    image = (f"<image href='{_data_uri(sighting.thumbnail)}' x='{x:.1f}' y='{y + 6}' width='{THUMB_W}' "
             f"height='{THUMB_H}' preserveAspectRatio='xMidYMid meet'/>" if sighting.thumbnail else "")
    colour = "#e70" if query else "#c00" if conflicted else "#36c"
    dashes = " stroke-dasharray='5 3'" if conflicted else ""
    frame = f"stroke='{colour}' stroke-width='{3 if query or conflicted else 1}'{dashes}"
    bar_x, bar_y = x_at(sighting.t_start), y + THUMB_H + 16
    bar_w = max(x_at(sighting.t_end) - bar_x, 3.0)
    return (f"<g class='sighting{' query' if query else ''}{' conflict' if conflicted else ''}' data-key='{html.escape(sighting.key)}'>"
            f"<title>{html.escape(title)}</title>"
            f"<line x1='{x + THUMB_W / 2:.1f}' y1='{y + 6 + THUMB_H}' x2='{bar_x:.1f}' y2='{bar_y}' stroke='#aab'/>"
            f"<rect x='{x:.1f}' y='{y + 6}' width='{THUMB_W}' height='{THUMB_H}' fill='#eee'/>{image}"
            f"<rect x='{x:.1f}' y='{y + 6}' width='{THUMB_W}' height='{THUMB_H}' fill='none' {frame}/>"
            f"<rect x='{bar_x:.1f}' y='{bar_y}' width='{bar_w:.1f}' height='8' rx='2' fill='#36c'/>"
            f"<circle cx='{x:.1f}' cy='{y + 6}' r='9' fill='#36c'/><text x='{x:.1f}' y='{y + 10}' font-size='11' "
            f"fill='#fff' text-anchor='middle'>{number}</text></g>")


def _projected(cameras: Cameras) -> dict[str, tuple[float, float]]:
    """Each positioned camera's point on the page plane (y down): metres as they are, degrees scaled so that a
    degree of longitude is as long as at the cameras' mean latitude."""
    placed = {c.camera_id: c.position for c in cameras.cameras.values() if c.position is not None}
    geo = [p for p in placed.values() if isinstance(p, GeoPoint)]
    shrink = math.cos(math.radians(sum(p.lat for p in geo) / len(geo))) if geo else 1.0
    return {camera_id: (p.x_m, -p.y_m) if isinstance(p, MapPoint) else (p.lon * shrink, -p.lat)
            for camera_id, p in placed.items()}


def map_svg(journey: Journey, cameras: Cameras) -> str:
    """The cameras file's positioned cameras as points (those of the journey in blue) and the journey's path between
    them in order, numbered by step; empty when the file gives no positions."""
    points = _projected(cameras)
    if not points:
        return ""
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    scale = min((MAP_W - 2 * MAP_PAD) / max(max(xs) - min(xs), 1e-9), (MAP_H - 2 * MAP_PAD) / max(max(ys) - min(ys), 1e-9))
    mid_x, mid_y = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2

    def at(camera_id: str) -> tuple[float, float]:
        px, py = points[camera_id]
        return MAP_W / 2 + (px - mid_x) * scale, MAP_H / 2 + (py - mid_y) * scale

    path = [s.camera_id for s in journey.sightings if s.camera_id in points]
    steps = [(a, b) for a, b in zip(path, path[1:]) if a != b]
    parts = [f"<svg class='map' xmlns='http://www.w3.org/2000/svg' width='{MAP_W}' height='{MAP_H}' "
             f"viewBox='0 0 {MAP_W} {MAP_H}'><defs><marker id='map-arrow' viewBox='0 0 10 10' refX='9' refY='5' "
             "markerWidth='7' markerHeight='7' orient='auto'><path d='M0,0 L10,5 L0,10 z' fill='#36c'/></marker>"
             f"</defs><rect width='{MAP_W}' height='{MAP_H}' fill='#fff' stroke='#ddd'/>"]
    for step, (a, b) in enumerate(steps, 1):
        (x1, y1), (x2, y2) = at(a), at(b)
        length = max(math.hypot(x2 - x1, y2 - y1), 1e-9)
        ux, uy = (x2 - x1) / length, (y2 - y1) / length
        bend = 14 * (1 + steps[:step - 1].count((a, b)) + steps[:step - 1].count((b, a)))  # repeated legs fan out
        cx, cy = (x1 + x2) / 2 - uy * bend, (y1 + y2) / 2 + ux * bend
        parts.append(f"<g class='leg'><path d='M{x1 + ux * 9:.1f},{y1 + uy * 9:.1f} Q{cx:.1f},{cy:.1f} "
                     f"{x2 - ux * 9:.1f},{y2 - uy * 9:.1f}' fill='none' stroke='#36c' stroke-width='2' "
                     f"marker-end='url(#map-arrow)'/><text x='{cx:.1f}' y='{cy:.1f}' font-size='11' fill='#36c' "
                     f"stroke='#fff' stroke-width='3' paint-order='stroke' text-anchor='middle'>{step}</text></g>")
    visited = set(path)
    for camera_id in points:
        x, y = at(camera_id)
        parts.append(f"<g class='camera-point' data-camera='{html.escape(camera_id)}'><circle cx='{x:.1f}' "
                     f"cy='{y:.1f}' r='7' fill='{'#36c' if camera_id in visited else '#bbb'}'/><text x='{x + 10:.1f}' "
                     f"y='{y - 8:.1f}' font-size='12'>{html.escape(cameras.display(camera_id).name)}</text></g>")
    parts.append("</svg>")
    return "".join(parts)


def _table(journey: Journey, cameras: Cameras) -> str:
    """The sightings in order (camera, local time, UTC, detections, track, best detection), a transit row between
    consecutive ones."""
    head = ("<tr><th>#</th><th>camera</th><th>local time</th><th>UTC</th><th>lasted</th><th>detections</th>"
            "<th>track</th><th>best detection</th></tr>")
    rows = [head]
    for number, sighting in enumerate(journey.sightings, 1):
        if number > 1:
            transit = journey.transits[number - 2]
            css = "flag" if transit.verdict == IMPOSSIBLE else "warn" if transit.flagged else ""
            rows.append(f"<tr class='transit'><td></td><td colspan='7' class='{css}'>&rarr; "
                        f"{html.escape(transit_text(transit))}</td></tr>")
        display = cameras.display(sighting.camera_id)
        rows.append(f"<tr><td>{number}{' (query)' if number == journey.query + 1 else ''}</td><td>{html.escape(display.name)} ({html.escape(sighting.camera_id)})</td>"
                    f"<td>{html.escape(local_span_text(sighting, cameras))}</td>"
                    f"<td>{span_text(sighting.t_start, sighting.t_end)}</td>"
                    f"<td>{duration_text(sighting.t_end - sighting.t_start)}</td><td>{sighting.detections}</td>"
                    f"<td>{html.escape(sighting.track_id or '-')}</td>"
                    f"<td>{html.escape(sighting.best_detection_id or '-')}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def write_journey_html(path: str | Path, title: str, journey: Journey, cameras: Cameras, chosen: str) -> Path:
    """Write the journey page: summary, warnings, timeline, map (with positions), table and assumptions."""
    sightings = journey.sightings
    flagged = [t for t in journey.transits if t.flagged]
    lines = [f"{len(sightings)} sighting(s) on {len({s.camera_id for s in sightings})} camera(s), "
             f"{span_text(sightings[0].t_start, max(s.t_end for s in sightings))} UTC; sightings: {html.escape(chosen)}."]
    if journey.conflicts:
        lines.append(f"<span class='flag'>Seen {html.escape(conflicts_text(journey))}.</span>")
    if flagged:
        lines.append(f"<span class='warn'>{len(flagged)} transit(s) flagged: check those sightings.</span>")
    map_part = map_svg(journey, cameras)
    body = (f"<h1>{html.escape(title)}</h1>" + "".join(f"<p>{line}</p>" for line in lines)
            + f"<h2>Timeline</h2><div class='timeline'>{timeline_svg(journey, cameras)}</div>"
            + (f"<h2>Camera map</h2>{map_part}" if map_part else "")
            + f"<h2>Sightings</h2>{_table(journey, cameras)}<p class='note'>{html.escape(ASSUMPTIONS)}</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}{_STYLE}</style></head><body>{body}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
