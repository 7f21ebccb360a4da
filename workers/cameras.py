"""The cameras file (``cameras.yaml``): per camera a display name, time zone, clock correction, position and links.

Read and checked whole before any work, so a mistake is one line naming the file, the camera and the key. The format
is CAMERAS_EXAMPLE (README: the cameras file). A camera with a ``start_time`` has its videos taken, in path order, as
one continuous recording: the first starts at ``start_time``, each next one where the one before it ended.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from workers.errors import CamerasError

CAMERAS_FILE_NAME = "cameras.yaml"
CAMERAS_EXAMPLE = """\
cameras:
  north:                          # camera id: the videos' folder (or their kpr sidecar's camera_id)
    name: North gate              # display name (default: the id)
    timezone: Europe/Paris        # IANA time zone of its local time (default: UTC)
    clock_offset_s: 90            # seconds to add to its clock for true time (a camera 90 s slow: +90)
    position: [12.5, 3.0]         # metres on a site plan, or {lat: 48.85, lon: 2.35}
    connects_to: {lobby: 45}      # cameras reached from here, with the usual transit in seconds
  lobby:
    timezone: Europe/Paris
    start_time: 2026-03-01T08:00  # local start of its first video, when file times mean nothing:
                                  # its videos, in path order, run back to back from it
    connects_to: {north: [30, 120]}  # or a transit window: [fastest, slowest] seconds (kpr link)
"""
CAMERA_KEYS = ("name", "timezone", "clock_offset_s", "start_time", "position", "connects_to")


@dataclass(frozen=True)
class MapPoint:
    """A camera's place on a site plan, in metres."""

    x_m: float
    y_m: float


@dataclass(frozen=True)
class GeoPoint:
    """A camera's place on the globe, in degrees."""

    lat: float
    lon: float


@dataclass(frozen=True)
class Camera:
    """One camera of the file, checked: times are UTC epoch seconds, transit times seconds."""

    camera_id: str
    name: str
    timezone: str
    clock_offset_s: float = 0.0
    start_time: float | None = None  # start of the camera's first video (its local wall-clock time, made UTC)
    position: MapPoint | GeoPoint | None = None
    connects_to: dict[str, float] = field(default_factory=dict)  # camera id -> usual (or fastest) transit seconds
    transit_windows: dict[str, tuple[float, float]] = field(default_factory=dict)  # camera id -> (fastest, slowest)


class CameraDisplay(NamedTuple):
    """How the views show a camera: its display name and the time zone of its local time."""

    name: str
    zone: ZoneInfo


@dataclass(frozen=True)
class Cameras:
    """The cameras file an ingestion uses (``path`` None: there is none) and the cameras it describes."""

    path: str | None = None
    cameras: dict[str, Camera] = field(default_factory=dict)

    def display(self, camera_id: str) -> CameraDisplay:
        """The camera's display name and time zone; a camera the file does not describe shows its id, in UTC."""
        camera = self.cameras.get(camera_id)
        if camera is None:
            return CameraDisplay(camera_id, ZoneInfo("UTC"))
        return CameraDisplay(camera.name, ZoneInfo(camera.timezone))

    def mismatches(self, video_cameras: set[str]) -> list[str]:
        """Warnings for the cameras the file describes that have no video, and the videos' cameras it lacks."""
        if self.path is None:
            return []
        unused = sorted(set(self.cameras) - video_cameras)
        missing = sorted(video_cameras - set(self.cameras))
        warnings = []
        if unused:
            warnings.append(f"{self.path} describes camera(s) with no video: {', '.join(unused)}")
        if missing:
            warnings.append(f"{self.path} does not describe camera(s) {', '.join(missing)}: their videos keep "
                            "their sidecar or file times, shown in UTC")
        return warnings


def archive_cameras(archive_root: str | Path, path: str | None = None) -> Cameras:
    """The cameras file ``path``, else ``cameras.yaml`` in the archive's root folder when there is one, read and
    checked (CamerasError), else no cameras file."""
    if path is not None:
        if not Path(path).is_file():
            raise CamerasError(f"cameras file not found: {path}")
        return read_cameras(path)
    beside = Path(archive_root) / CAMERAS_FILE_NAME
    return read_cameras(beside) if beside.is_file() else Cameras()


def read_cameras(path: str | Path) -> Cameras:
    """Read and check a cameras file: CamerasError with one line naming the file, camera and key of a mistake."""
    return parse_cameras(cameras_text(path), path)


def cameras_text(path: str | Path) -> str:
    """The text of the cameras file ``path`` (CamerasError when it cannot be read as text)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CamerasError(f"cannot read cameras file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CamerasError(f"{path}: not a text file") from None


def parse_cameras(text: str, path: str | Path) -> Cameras:
    """Check the text of a cameras file (read from ``path``, which errors name), as read_cameras does."""
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise CamerasError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(document, dict) or "cameras" not in document:
        raise CamerasError(f"{path}: expected a mapping with the key 'cameras' (see kpr ingest --help)")
    extra = sorted(str(key) for key in document if key != "cameras")
    if extra:
        raise CamerasError(f"{path}: unknown key {extra[0]!r} (the file holds only 'cameras')")
    entries = document["cameras"]
    if not isinstance(entries, dict) or not entries:
        raise CamerasError(f"{path}: cameras: expected a mapping of camera id -> settings, with at least one camera")
    named = {_camera_id(key, path): raw for key, raw in entries.items()}
    cameras = {camera_id: _camera(camera_id, raw, set(named), str(path)) for camera_id, raw in named.items()}
    kinds = {type(camera.position).__name__ for camera in cameras.values() if camera.position is not None}
    if len(kinds) > 1:
        raise CamerasError(f"{path}: positions mix [x, y] metres and {{lat, lon}}: give every camera the same kind")
    return Cameras(str(path), cameras)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and on which line."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"{exc.problem} (line {exc.problem_mark.line + 1})"
    return str(exc).splitlines()[0]


def _camera_id(key: Any, path: str | Path) -> str:
    """A camera id of the file: a string (or a number, as a folder named by digits reads in YAML)."""
    if isinstance(key, bool) or not isinstance(key, (str, int)) or not str(key):
        raise CamerasError(f"{path}: cameras: camera id {key!r} is not a name")
    return str(key)


def _camera(camera_id: str, raw: Any, ids: set[str], path: str) -> Camera:
    """One camera's settings, checked."""
    def error(key: str, problem: str) -> CamerasError:
        return CamerasError(f"{path}: camera {camera_id!r}: {key}: {problem}")

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CamerasError(f"{path}: camera {camera_id!r}: expected a mapping of settings ({', '.join(CAMERA_KEYS)})")
    for key in raw:
        if key not in CAMERA_KEYS:
            raise error(str(key), f"unknown key (known: {', '.join(CAMERA_KEYS)})")
    if "clock_offset_s" in raw and "start_time" in raw:
        raise error("start_time", "give clock_offset_s or start_time, not both")
    name = raw.get("name", camera_id)
    if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
        raise error("name", f"expected a display name, got {name!r}")
    timezone = raw.get("timezone", "UTC")
    zone = _zone(timezone, error)
    offset = _number(raw["clock_offset_s"], error, "clock_offset_s") if "clock_offset_s" in raw else 0.0
    start = _start_time(raw["start_time"], zone, error) if "start_time" in raw else None
    position = _position(raw["position"], error) if "position" in raw else None
    links, windows = _links(raw["connects_to"], camera_id, ids, error) if "connects_to" in raw else ({}, {})
    return Camera(camera_id, str(name).strip(), timezone, offset, start, position, links, windows)


def _zone(value: Any, error) -> ZoneInfo:
    """An IANA time zone by name."""
    if not isinstance(value, str):
        raise error("timezone", f"expected an IANA time zone name such as Europe/Paris, got {value!r}")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise error("timezone", f"unknown time zone {value!r} (IANA names such as Europe/Paris or UTC)") from None


def _number(value: Any, error, key: str) -> float:
    """A finite number (a YAML bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(key, f"expected a number, got {value!r}")
    return float(value)


def _start_time(value: Any, zone: ZoneInfo, error) -> float:
    """An ISO 8601 date and time as UTC epoch seconds: in the camera's time zone unless it carries its own offset
    (an hour that a daylight-saving change repeats is taken at its first pass)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise error("start_time", f"not an ISO 8601 date and time: {value!r}") from None
    if not isinstance(value, datetime):
        got = f"a date without a time ({value})" if isinstance(value, date) else repr(value)
        raise error("start_time", f"expected an ISO 8601 date and time such as 2026-03-01T08:00:00, got {got}")
    return (value if value.tzinfo is not None else value.replace(tzinfo=zone)).timestamp()


def _position(value: Any, error) -> MapPoint | GeoPoint:
    """[x, y] in metres or {lat, lon} in degrees."""
    if isinstance(value, list) and len(value) == 2:
        return MapPoint(*(_number(v, error, "position") for v in value))
    if isinstance(value, dict) and set(value) == {"lat", "lon"}:
        lat, lon = _number(value["lat"], error, "position"), _number(value["lon"], error, "position")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise error("position", f"lat must be in [-90, 90] and lon in [-180, 180], got {lat:g}, {lon:g}")
        return GeoPoint(lat, lon)
    raise error("position", f"expected [x, y] in metres or {{lat: .., lon: ..}} in degrees, got {value!r}")


def _links(value: Any, camera_id: str, ids: set[str], error) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Other cameras of the file this one leads to: the usual transit time in seconds (>= 0) of each (the fastest of a
    window), and the [fastest, slowest] transit window of those given one."""
    if not isinstance(value, dict):
        raise error("connects_to", f"expected a mapping of camera id -> transit seconds, got {value!r}")
    links, windows = {}, {}
    for key, seconds in value.items():
        other = str(key)
        if other not in ids or other == camera_id:
            raise error("connects_to", f"{other!r} is not another camera of this file")
        if isinstance(seconds, list):
            if len(seconds) != 2:
                raise error("connects_to", f"transit window to {other!r}: expected [fastest, slowest] seconds, "
                                           f"got {seconds!r}")
            fastest, slowest = (_number(v, error, "connects_to") for v in seconds)
            if not 0 <= fastest <= slowest:
                raise error("connects_to", f"impossible transit window to {other!r}: [{fastest:g}, {slowest:g}] "
                                           "(needs 0 <= fastest <= slowest)")
            links[other], windows[other] = fastest, (fastest, slowest)
            continue
        transit = _number(seconds, error, "connects_to")
        if transit < 0:
            raise error("connects_to", f"transit time to {other!r} must be >= 0 seconds, got {transit:g}")
        links[other] = transit
    return links, windows
