"""Which cameras file the views use: the one given, else the one the store's latest ingestion read, so that
`kpr serve --db DB` shows camera names and local times without being told the file again."""
from __future__ import annotations

from pathlib import Path

from storage import Store
from workers.cameras import Cameras, CamerasError, cameras_text, parse_cameras, read_cameras


def view_cameras(store: Store, path: str | Path | None) -> Cameras:
    """The cameras file ``path`` (read and checked), else the store's recorded one, else no cameras file."""
    if path is not None:
        return read_cameras(path)
    recorded = store.cameras_file()
    if recorded is None:
        return Cameras()
    source, text = recorded
    try:
        return parse_cameras(text, f"{source} (as the store recorded it)")
    except CamerasError as exc:  # e.g. recorded by a release that read the file less strictly
        raise CamerasError(f"{exc}; pass --cameras FILE") from None


def remember_cameras(store: Store, cameras: Cameras) -> bool:
    """Record the cameras file an ingestion read in its store, unless it is the one recorded already; whether it did."""
    if cameras.path is None:
        return False
    text = cameras_text(cameras.path)
    path = str(Path(cameras.path).resolve())
    if store.cameras_file() == (path, text):
        return False
    store.record_cameras_file(path, text)
    return True
