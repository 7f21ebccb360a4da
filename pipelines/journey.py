"""The journey of a person across cameras: their sightings in time order and the transit between cameras, each
transit checked against the usual transit time of the cameras file.

Assumptions, stated in the README and on the page: a ``connects_to`` time given one way holds both ways unless the
other camera gives its own; two cameras linked with 0 s see the same place, so a person may be on both at once;
any other two cameras seeing the person at the same time is impossible (one of the sightings is someone else).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.times import iso_utc, span_text, zone_name
from storage import Store
from storage.sightings import Sighting, read_sightings
from workers.cameras import Cameras

SAME_CAMERA = "same camera"
PLAUSIBLE = "plausible"
NO_USUAL_TIME = "no usual transit time"
SHARED_VIEW = "cameras overlap"
TOO_FAST = "suspicious: faster than the usual transit"
IMPOSSIBLE = "impossible: seen on both cameras at once"
FLAGGED = (TOO_FAST, IMPOSSIBLE)


@dataclass(frozen=True)
class Transit:
    """The move from sighting ``origin`` to the next one, ``target`` (indices into the journey's sightings): the gap
    from the end of one to the start of the next (negative: they overlap), the usual transit time between their
    cameras (None: same camera or none given) and the verdict on it."""

    origin: int
    target: int
    gap_s: float
    usual_s: float | None
    verdict: str

    @property
    def flagged(self) -> bool:
        """Whether the transit is too fast or impossible: one of its sightings is likely someone else."""
        return self.verdict in FLAGGED


@dataclass(frozen=True)
class Journey:
    """A person's sightings in time order, the transits between consecutive ones, every pair of sightings (indices)
    on two cameras at once that do not overlap in view, and the index of the query's sighting."""

    sightings: list[Sighting]
    transits: list[Transit]
    conflicts: list[tuple[int, int]]
    query: int


def usual_transit(cameras: Cameras, origin: str, target: str) -> float | None:
    """The usual transit time from camera ``origin`` to ``target``: the file's ``connects_to`` from origin, else the
    one given the other way (None: no link given)."""
    described = cameras.cameras
    there = described[origin].connects_to.get(target) if origin in described else None
    back = described[target].connects_to.get(origin) if target in described else None
    return there if there is not None else back


def build_journey(sightings: Sequence[Sighting], cameras: Cameras) -> Journey:
    """The journey through ``sightings`` (the query's first): ordered by start (then end, then camera), transits and
    conflicts checked."""
    ordered = sorted(sightings, key=lambda s: (s.t_start, s.t_end, s.camera_id, s.key))
    transits = []
    for i in range(len(ordered) - 1):
        before, after = ordered[i], ordered[i + 1]
        gap = after.t_start - before.t_end
        usual = None if before.camera_id == after.camera_id else usual_transit(cameras, before.camera_id,
                                                                                after.camera_id)
        transits.append(Transit(i, i + 1, gap, usual, _verdict(before, after, gap, usual)))
    conflicts = [(i, j) for i in range(len(ordered)) for j in range(i + 1, len(ordered))
                 if ordered[j].t_start < ordered[i].t_end and ordered[i].camera_id != ordered[j].camera_id
                 and usual_transit(cameras, ordered[i].camera_id, ordered[j].camera_id) != 0]
    return Journey(ordered, transits, conflicts, ordered.index(sightings[0]))


def _verdict(before: Sighting, after: Sighting, gap: float, usual: float | None) -> str:
    """How plausible the move from ``before`` to ``after`` is, given the gap between them and the usual transit."""
    if before.camera_id == after.camera_id:
        return SAME_CAMERA
    if gap < 0:
        return SHARED_VIEW if usual == 0 else IMPOSSIBLE
    if usual is None:
        return NO_USUAL_TIME
    return TOO_FAST if gap < usual else PLAUSIBLE


def person_sightings(store: Store, query_id: str, same: Sequence[str],
                     hits: int) -> tuple[list[Sighting], str]:
    """The sightings of the person of ``query_id`` (a tracklet, or a detection) and how they were chosen: the query
    and the ``same`` ids confirmed by the investigator, else the query and its top ``hits`` people (any camera)
    within the model's calibrated "no close match" distance; only the query when the model was not calibrated."""
    chosen = read_sightings(store, [query_id, *same])
    if same:
        return chosen, f"the query and {len(chosen) - 1} confirmed sighting(s)"
    from pipelines.query import Query, QuerySearch  # searching loads the model code (PyTorch): only when needed

    query = chosen[0]
    asked = (Query(track_id=query.track_id, k=hits, same_camera=True) if query.track_id
             else Query(detection_id=query.key, k=hits, same_camera=True))
    result = QuerySearch(store, None, "").run(asked)
    threshold = result.no_close_match_above  # that of the distance the store's model searches by (KPR or global)
    if threshold is None:
        return chosen, "the query alone: nothing confirmed (--same) and the model is not calibrated (kpr calibrate)"
    close = [p.track_id or p.best.detection_id for p in result.people if p.distance <= threshold]
    chosen = read_sightings(store, [query.key, *close])
    return chosen, (f"the query and {len(chosen) - 1} hit(s) within the calibrated no-close-match distance "
                    f"{threshold:.4f} (nothing confirmed with --same)")


def journey_rows(journey: Journey, cameras: Cameras) -> dict:
    """The journey as plain data (--json): each sighting with its camera's name, its UTC and local span, and each
    transit and conflict."""
    sightings, query = [], journey.sightings[journey.query]
    for sighting in journey.sightings:
        display = cameras.display(sighting.camera_id)
        sightings.append({
            "track_id": sighting.track_id, "best_detection_id": sighting.best_detection_id,
            "camera_id": sighting.camera_id, "camera_name": display.name, "timezone": display.zone.key,
            "video_id": sighting.video_id, "detections": sighting.detections, "query": sighting is query,
            "t_start": sighting.t_start, "t_end": sighting.t_end,
            "start_utc": iso_utc(sighting.t_start), "end_utc": iso_utc(sighting.t_end),
            "local": local_span_text(sighting, cameras)})
    transits = [{"from": t.origin + 1, "to": t.target + 1, "gap_s": t.gap_s, "usual_s": t.usual_s,
                 "verdict": t.verdict, "flagged": t.flagged} for t in journey.transits]
    conflicts = [{"first": i + 1, "second": j + 1} for i, j in journey.conflicts]
    return {"sightings": sightings, "transits": transits, "conflicts": conflicts}


def local_span_text(sighting: Sighting, cameras: Cameras) -> str:
    """The sighting's span on its camera's local clock, with the zone's name: "2026-01-01 09:00:03..09:00:10 CET"."""
    zone = cameras.display(sighting.camera_id).zone
    return f"{span_text(sighting.t_start, sighting.t_end, zone)} {zone_name(sighting.t_start, zone)}"


def journey_lines(journey: Journey, cameras: Cameras) -> list[str]:
    """The journey as text: one line per sighting (number, camera, local time, UTC, detections, track), a transit line
    between consecutive ones, then the sightings seen on two cameras at once."""
    lines = []
    for number, sighting in enumerate(journey.sightings, 1):
        if number > 1:
            transit = journey.transits[number - 2]
            lines.append(f"{'!!' if transit.flagged else '':>4}    -> {transit_text(transit)}")
        display = cameras.display(sighting.camera_id)
        camera = display.name if display.name == sighting.camera_id else f"{display.name} ({sighting.camera_id})"
        utc = f"{span_text(sighting.t_start, sighting.t_end)} UTC"
        when = utc if display.zone.key == "UTC" else f"{local_span_text(sighting, cameras)} = {utc}"
        what = f"track {sighting.track_id}" if sighting.track_id else f"detection {sighting.key}"
        what += " (the query)" if number == journey.query + 1 else ""
        lines.append(f"{number:>4}  {camera}  {when}  {sighting.detections} detection(s)  {what}")
    if journey.conflicts:
        lines.append(f"!! seen {conflicts_text(journey)}")
    return lines


def conflicts_text(journey: Journey) -> str:
    """One sentence on the pairs of sightings on two cameras at the same time."""
    pairs = ", ".join(f"#{i + 1} and #{j + 1}" for i, j in journey.conflicts)
    return f"on two cameras at the same time (one of each pair is someone else): {pairs}"


def duration_text(seconds: float) -> str:
    """A duration as people say it: "1.6 s", "45 s", "3 min 20 s", "2 h 05 min"."""
    if abs(seconds) < 10:
        return f"{abs(seconds):.1f} s"
    seconds = abs(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def transit_text(transit: Transit) -> str:
    """One line on a transit: how long, the usual time and the verdict."""
    gap = (f"overlap {duration_text(transit.gap_s)}" if transit.gap_s < 0 else duration_text(transit.gap_s))
    usual = "" if transit.usual_s is None else f", usual {duration_text(transit.usual_s)}"
    return f"{gap}{usual}: {transit.verdict}"
