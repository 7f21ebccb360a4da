"""Finding the videos of an archive and naming each by its content hash."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from workers.errors import ArchiveError

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts"})


@dataclass(frozen=True)
class VideoTask:
    """A video to ingest: content-hash id, location, and the camera it came from (its folder by default)."""

    video_id: str
    uri: str
    camera_id: str


def content_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes (first 32 hex digits): the same video keeps its id wherever it is moved."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:32]


class ArchiveFiles(NamedTuple):
    """An archive's root folder and every video file under it, sorted."""

    root: Path
    files: list[Path]


def _raise(error: OSError) -> None:
    raise error


def _video_files(root: Path) -> list[Path]:
    """Every video file under ``root``, sorted, following links to folders (an archive is often a folder of links to
    camera mounts), each real folder once (so a link loop ends); OSError when a folder cannot be read."""
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, onerror=_raise, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        found += [Path(folder, name) for name in names if Path(name).suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(path for path in found if path.is_file())


def list_video_files(archive: str | Path) -> ArchiveFiles:
    """The archive's root folder and every video file under it (recursively, by extension), sorted.

    Cheap (no file is read), so callers can check an archive before starting any work.
    """
    root = Path(archive).expanduser()
    if not root.exists():
        raise ArchiveError(f"archive not found: {root}")
    if root.is_file():
        files = [root] if root.suffix.lower() in VIDEO_EXTENSIONS else []
        root = root.parent
    else:
        try:
            files = _video_files(root)
        except OSError as exc:
            raise ArchiveError(f"cannot read archive {root}: {exc.strerror}") from None
    if not files:
        raise ArchiveError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) found in {Path(archive)}")
    return ArchiveFiles(root, files)


def discover_videos(archive: ArchiveFiles) -> list[VideoTask]:
    """Every distinct video of a listed archive as a task named by its content hash.

    The camera id is the video's folder relative to the archive ("root" for files at its top). A file
    whose bytes equal an earlier one's (a copy) is the same video and is listed once, under its first path.
    """
    tasks: dict[str, VideoTask] = {}
    for path in archive.files:
        relative = path.parent.relative_to(archive.root)
        camera = relative.as_posix() if relative.parts else "root"
        try:
            video_id = content_hash(path)
        except OSError as exc:
            raise ArchiveError(f"cannot read {path}: {exc.strerror}") from None
        tasks.setdefault(video_id, VideoTask(video_id, str(path.resolve()), camera))
    return list(tasks.values())
