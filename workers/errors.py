"""Error types of the ingestion workers: each carries a one-line message fit for a user."""


class WorkerError(Exception):
    """Base class of ingestion errors that a user can act on (bad file, bad archive)."""


class ArchiveError(WorkerError):
    """The archive path is missing, unreadable or holds no video."""


class DecodeError(WorkerError):
    """A video file cannot be opened or decoded."""


class AnnotationError(WorkerError):
    """A sidecar annotation file is missing, unreadable or malformed."""


class CamerasError(WorkerError):
    """A cameras file is missing, unreadable or describes a camera wrongly, or cannot time a video."""
