"""The cameras file: parsing and its one-line errors, video clocks, and a real `kpr ingest` that it times."""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pipelines.cli import main
from storage import Store
from support import write_video
from workers.backends import BackendConfig
from workers.cameras import CAMERAS_EXAMPLE, CameraDisplay, Cameras, GeoPoint, MapPoint, archive_cameras, read_cameras
from workers.decode import probe_video
from workers.discover import VideoTask
from workers.errors import CamerasError
from workers.video_clocks import VideoClocks, camera_and_start, video_clocks

ANNOTATIONS = BackendConfig()


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def test_the_documented_example_reads_as_documented(tmp_path):
    cameras = read_cameras(_file(tmp_path, CAMERAS_EXAMPLE))
    north, lobby = cameras.cameras["north"], cameras.cameras["lobby"]
    assert (north.name, north.timezone, north.clock_offset_s, north.start_time) == ("North gate", "Europe/Paris", 90.0,
                                                                                      None)
    assert north.position == MapPoint(12.5, 3.0) and north.connects_to == {"lobby": 45.0}
    # 08:00 in Paris on 1 March (winter time, UTC+1) is 07:00 UTC
    assert lobby.start_time == datetime(2026, 3, 1, 7, 0, tzinfo=timezone.utc).timestamp()
    assert (lobby.name, lobby.clock_offset_s, lobby.position) == ("lobby", 0.0, None)


def test_the_readme_shows_the_example_that_kpr_ingest_help_shows():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("#### The cameras file", 1)[1]
    assert section.split("```yaml\n", 1)[1].split("```", 1)[0] == CAMERAS_EXAMPLE


def test_views_get_a_cameras_name_and_zone_and_unknown_cameras_show_their_id_in_utc(tmp_path):
    cameras = read_cameras(_file(tmp_path, CAMERAS_EXAMPLE))
    assert cameras.display("north") == CameraDisplay("North gate", ZoneInfo("Europe/Paris"))
    assert cameras.display("garage") == CameraDisplay("garage", ZoneInfo("UTC"))
    assert Cameras().display("north") == CameraDisplay("north", ZoneInfo("UTC"))


def test_start_times_with_their_own_offset_and_geographic_positions(tmp_path):
    cameras = read_cameras(_file(tmp_path, """
cameras:
  7:
    timezone: America/New_York
    start_time: "2026-07-01T08:00:00+02:00"
    position: {lat: 48.85, lon: 2.35}
"""))
    camera = cameras.cameras["7"]
    assert camera.start_time == datetime(2026, 7, 1, 6, 0, tzinfo=timezone.utc).timestamp()
    assert camera.position == GeoPoint(48.85, 2.35)


@pytest.mark.parametrize("text, expected", [
    ("cameras:\n  north:\n    zone: UTC\n", "camera 'north': zone: unknown key"),
    ("cameras:\n  north:\n    timezone: Europe/Pariss\n", "camera 'north': timezone: unknown time zone 'Europe/Pariss'"),
    ("cameras:\n  north:\n    timezone: 3\n", "camera 'north': timezone: expected an IANA time zone name"),
    ("cameras:\n  north:\n    clock_offset_s: 90s\n", "camera 'north': clock_offset_s: expected a number, got '90s'"),
    ("cameras:\n  north:\n    clock_offset_s: true\n", "camera 'north': clock_offset_s: expected a number"),
    ("cameras:\n  north:\n    name: [a, b]\n", "camera 'north': name: expected a display name"),
    ("cameras:\n  north:\n    clock_offset_s: 5\n    start_time: 2026-03-01T08:00:00\n",
     "camera 'north': start_time: give clock_offset_s or start_time, not both"),
    ("cameras:\n  north:\n    start_time: 2026-03-01\n", "camera 'north': start_time: expected an ISO 8601 date and time"),
    ("cameras:\n  north:\n    start_time: eight o'clock\n", "camera 'north': start_time: not an ISO 8601 date and time"),
    ("cameras:\n  north:\n    position: [1, 2, 3]\n", "camera 'north': position: expected [x, y] in metres"),
    ("cameras:\n  north:\n    position: {lat: 91, lon: 0}\n", "camera 'north': position: lat must be in [-90, 90]"),
    ("cameras:\n  north:\n    position: [1, 2]\n  south:\n    position: {lat: 1, lon: 2}\n",
     "positions mix [x, y] metres and {lat, lon}"),
    ("cameras:\n  north:\n    connects_to: {south: 30}\n", "camera 'north': connects_to: 'south' is not another camera"),
    ("cameras:\n  north:\n    connects_to: {south: -1}\n  south: {}\n",
     "camera 'north': connects_to: transit time to 'south' must be >= 0 seconds"),
    ("cameras:\n  north: fast\n", "camera 'north': expected a mapping of settings"),
    ("cameras:\n  north: {}\n  north: {}\n", "not valid YAML: key 'north' given twice (line 3)"),
    ("cameras: [north]\n", "cameras: expected a mapping of camera id -> settings"),
    ("cameras: {north: {}}\nsites: {}\n", "unknown key 'sites'"),
    ("north: {}\n", "expected a mapping with the key 'cameras'"),
    ("cameras: {north: {]\n", "not valid YAML"),
])
def test_each_mistake_is_one_line_naming_the_file_camera_and_key(tmp_path, text, expected):
    path = _file(tmp_path, text)
    with pytest.raises(CamerasError) as caught:
        read_cameras(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_the_archives_cameras_yaml_is_read_unless_another_file_is_named(tmp_path):
    assert archive_cameras(tmp_path) == Cameras()
    beside = _file(tmp_path, "cameras:\n  north: {name: North}\n")
    other = tmp_path / "other.yaml"
    other.write_text("cameras:\n  south: {}\n  west: {}\n")
    assert archive_cameras(tmp_path).path == str(beside)
    assert set(archive_cameras(tmp_path, str(other)).cameras) == {"south", "west"}
    with pytest.raises(CamerasError, match="cameras file not found: .*missing.yaml"):
        archive_cameras(tmp_path, str(tmp_path / "missing.yaml"))


def test_cameras_without_videos_and_videos_of_cameras_not_described_are_warned_about(tmp_path):
    cameras = read_cameras(_file(tmp_path, CAMERAS_EXAMPLE))
    assert cameras.mismatches({"north", "lobby"}) == []
    unused, missing = cameras.mismatches({"north", "garage"})
    assert "describes camera(s) with no video: lobby" in unused and "does not describe camera(s) garage" in missing
    assert Cameras().mismatches({"garage"}) == []


def _video(folder: Path, name: str, frames: int, camera: str | None = None) -> VideoTask:
    """A small video of ``frames`` frames at 10 fps with a kpr sidecar (naming ``camera`` if given)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mp4"
    write_video(path, frames=frames)
    path.with_suffix(".json").write_text(json.dumps({"format": "kpr-sidecar-v1", "camera_id": camera}))
    return VideoTask(name, str(path), folder.name)


def test_a_start_time_camera_runs_its_videos_back_to_back_in_path_order(tmp_path):
    """Second video: starts where the first ended, whatever the order the tasks come in; an offset camera's video
    keeps its file time plus the offset; a video whose sidecar names the camera is timed as that camera's."""
    first, second = _video(tmp_path / "lobby", "a", 20), _video(tmp_path / "lobby", "b", 30)
    renamed = _video(tmp_path / "misc", "c", 10, camera="lobby")
    north = _video(tmp_path / "north", "d", 10)
    cameras = read_cameras(_file(tmp_path, CAMERAS_EXAMPLE))
    clocks = video_clocks(cameras, [north, renamed, second, first], ANNOTATIONS)
    start = cameras.cameras["lobby"].start_time
    first_s, second_s = probe_video(first.uri).duration, probe_video(second.uri).duration
    assert clocks.starts == {first.uri: start, second.uri: start + first_s, renamed.uri: start + first_s + second_s}
    assert camera_and_start(second, ANNOTATIONS, second_s, clocks) == ("lobby", start + first_s)
    duration = probe_video(north.uri).duration
    assert camera_and_start(north, ANNOTATIONS, duration, clocks) == (
        "north", os.path.getmtime(north.uri) - duration + 90.0)
    assert camera_and_start(north, ANNOTATIONS, duration) == ("north", os.path.getmtime(north.uri) - duration)


def test_after_an_unreadable_video_a_start_time_cameras_later_videos_fail_with_the_reason(tmp_path):
    first = _video(tmp_path / "lobby", "a", 20)
    broken = tmp_path / "lobby" / "b.mp4"
    broken.write_bytes(b"not a video")
    broken.with_suffix(".json").write_text(json.dumps({"format": "kpr-sidecar-v1"}))
    later = _video(tmp_path / "lobby", "c", 20)
    tasks = [first, VideoTask("b", str(broken), "lobby"), later]
    clocks = video_clocks(read_cameras(_file(tmp_path, CAMERAS_EXAMPLE)), tasks, ANNOTATIONS)
    assert set(clocks.starts) == {first.uri, str(broken)} and set(clocks.unknown) == {later.uri}
    with pytest.raises(CamerasError, match=f"earlier video {broken} of camera lobby"):
        camera_and_start(later, ANNOTATIONS, 2.0, clocks)
    assert VideoClocks() == video_clocks(Cameras(), tasks, ANNOTATIONS)


@pytest.mark.integration
def test_ingest_times_each_camera_as_its_cameras_file_says(small_archive, tiny_checkpoint, tmp_path, capsys):
    """cam1 runs 90 s slow, cam2's file times mean nothing (start_time), cam3 is not described, cam9 has no video."""
    archive = tmp_path / "archive"
    shutil.copytree(small_archive, archive)
    (archive / "cameras.yaml").write_text("""
cameras:
  cam1: {name: Entrance, timezone: Europe/Paris, clock_offset_s: 90}
  cam2: {timezone: Europe/Paris, start_time: 2026-03-01T08:00:00}
  cam9: {}
""")
    db = tmp_path / "db"
    assert main(["ingest", str(archive), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert f"cameras file: {archive / 'cameras.yaml'} (3 cameras)" in out
    assert "describes camera(s) with no video: cam9" in err and "does not describe camera(s) cam3" in err
    store = Store.open(str(db), create=False)
    assert store.cameras_file() == (str((archive / "cameras.yaml").resolve()), (archive / "cameras.yaml").read_text())
    assert main(["info", "--db", str(db)]) == 0
    assert f"cameras file: {(archive / 'cameras.yaml').resolve()}" in capsys.readouterr().out
    sidecar_start = {v.parent.name: json.loads(v.with_suffix(".json").read_text())["start_time"]
                     for v in archive.rglob("*.mp4")}
    expected = {"cam1": sidecar_start["cam1"] + 90.0,
                "cam2": datetime(2026, 3, 1, 7, 0, tzinfo=timezone.utc).timestamp(),
                "cam3": sidecar_start["cam3"]}
    videos = {row["camera_id"]: row for row in store.video_rows()}
    assert {camera: row["start_time"] for camera, row in videos.items()} == expected
    for camera, start in expected.items():
        fps = probe_video(videos[camera]["uri"]).fps
        rows = store.query_detections(f"camera_id = '{camera}'", columns=["timestamp", "frame_index"]).to_pylist()
        assert rows and all(row["timestamp"] == pytest.approx(start + row["frame_index"] / fps, abs=1e-3)
                            for row in rows)


def test_a_bad_cameras_file_stops_ingest_before_any_work_with_one_line(small_archive, tiny_checkpoint, tmp_path,
                                                                        capsys):
    bad = _file(tmp_path, "cameras:\n  cam1: {timezone: Mars/Olympus}\n")
    db = tmp_path / "db"
    code = main(["ingest", str(small_archive), "--db", str(db), "--model", str(tiny_checkpoint), "--no-progress",
                 "--cameras", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"kpr ingest: error: {bad}: camera 'cam1': timezone: unknown time zone "
                                 "'Mars/Olympus' (IANA names such as Europe/Paris or UTC)"]
    assert not db.exists()
