"""What one ingestion reads and writes (archive, store, model), opened and checked before any work starts.

Kept apart from the Prefect flow so that `kpr ingest` refuses a wrong archive, model or store in about a second:
this module imports neither Prefect nor Ray, and reads a model's facts without loading it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

from kpr_model.model_facts import ModelFacts, model_facts
from pipelines.errors import UserError
from storage import Store
from storage.schema import describe_model
from workers.cameras import Cameras, archive_cameras
from workers.discover import ArchiveFiles, VideoTask, list_video_files


@dataclass(frozen=True)
class IngestInputs:
    """What one ingestion reads and writes: an archive of videos (and its cameras file), a LanceDB store (folder or
    URI), a model.

    A store holds one model's embeddings: a model other than the store's is refused unless
    ``replace_model`` asks to re-embed the whole store with it.

    Each is opened once, on first use, and kept with this value: `kpr ingest` opens them before
    Prefect starts (a mistake is one line at once) and hands the flow what it opened; a deployment's
    flow run opens them itself.
    """

    archive: str
    db: str
    model: str
    model_input: str | None = None  # pixel coding of a global ReID ONNX model (None: the file's, else BGR 0..255)
    replace_model: bool = False     # re-embed the whole store with `model` when it holds another model's embeddings
    cameras_file: str | None = None  # the cameras file (None: cameras.yaml in the archive folder, if there is one)

    @cached_property
    def videos(self) -> ArchiveFiles:
        """The archive's video files (ArchiveError when there are none)."""
        return list_video_files(self.archive)

    @cached_property
    def cameras(self) -> Cameras:
        """The cameras file, read and checked (CamerasError), or none when the archive has none and none is named."""
        return archive_cameras(self.videos.root, self.cameras_file)

    @cached_property
    def model_facts(self) -> ModelFacts:
        """The model's id, kind and shape (KPRModelError for a missing or unreadable model)."""
        return model_facts(self.model, self.model_input)

    @property
    def model_id(self) -> str:
        """The model's id."""
        return self.model_facts.model_id

    @cached_property
    def store(self) -> Store:
        """The store, created when missing (StoreError when it cannot be)."""
        return Store.open(self.db)

    @property
    def model_record(self) -> dict:
        """The model as the store records it (Store.model)."""
        return asdict(self.model_facts)

    def open(self) -> None:
        """List the archive, read its cameras file and the model id, open the store and check that it holds this
        model (or none, or ``replace_model``), so that a mistake in any of them shows before work starts (a bad
        archive, cameras file or model leaves no new store behind)."""
        for opened in ("videos", "cameras", "model_facts", "store"):
            getattr(self, opened)
        held = self.store.model()
        if held is not None and held["model_id"] != self.model_id and not self.replace_model:
            raise UserError(f"the store at {self.db} holds embeddings of model {describe_model(held)}, not of "
                            f"{self.model} (model {describe_model(self.model_record)}); a store holds one model: pass "
                            "--replace-model to re-embed the whole store with this one, or ingest into another store")

    def adopt_model(self) -> bool:
        """Make this model the store's (recording it, or replacing the store's as ``replace_model`` allows);
        whether another model's embeddings were dropped for it."""
        held = self.store.model()
        if held is not None and held["model_id"] != self.model_id:
            self.store.replace_model(self.model_record)
            return True
        if held is None or any(held.get(key) != value for key, value in self.model_record.items()):
            self.store.set_model({**(held or {}), **self.model_record})  # a calibration (kpr calibrate) stays
        return False


def store_listed_videos(store: Store, model_id: str, known: list[VideoTask]) -> list[VideoTask]:
    """Videos the store lists under another model (left by a model replacement) that ``known`` lacks, as tasks
    at their recorded uri: they are re-embedded with ``model_id`` too."""
    seen = {task.video_id for task in known}
    return [VideoTask(row["video_id"], row["uri"], row["camera_id"]) for row in store.video_rows()
            if row["model_id"] != model_id and row["video_id"] not in seen]
