"""The embedding stage: KPR part embeddings and visibility for crops, and a video's assembly into tracklets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from kpr_model.embeddings import ReIDEmbeddings
from workers.crops import PersonCrop
from workers.track import Tracklet, track_video
from workers.video_job import BatchCrops, DetectionRecord, VideoCrops


@dataclass
class EmbeddedBatch:
    """One batch of frames' detection records with their embeddings (row-aligned; None without detections)."""

    frames: int
    records: list[DetectionRecord]
    embeddings: ReIDEmbeddings | None


@dataclass
class EmbeddedVideo:
    """A video ready for the store: its facts, detection records, their embeddings (row-aligned) and tracklets."""

    crops: VideoCrops
    embeddings: ReIDEmbeddings | None
    tracklets: list[Tracklet] = field(default_factory=list)

    @property
    def records(self) -> list[DetectionRecord]:
        return self.crops.records


def assemble_video(video: VideoCrops, batches: Iterable[EmbeddedBatch]) -> EmbeddedVideo:
    """Stitch a video's embedded batches (any order) in frame order and link its detections into tracklets."""
    batches = sorted((b for b in batches if b.records), key=lambda b: b.records[0].frame_index)
    video.records = [record for batch in batches for record in batch.records]
    video.crops = []
    if not batches:
        return EmbeddedVideo(video, None)
    embeddings = ReIDEmbeddings.concat([batch.embeddings for batch in batches])
    return EmbeddedVideo(video, embeddings, track_video(video.task.video_id, video.records, embeddings))


class Embedder:
    """Holds one KPR encoder (checkpoint folder or ONNX file) and embeds crops with their keypoint prompts."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 64):
        from kpr_model.model_files import open_encoder  # torch + timm: seconds to import, only embed workers need it

        self.encoder = open_encoder(model, device=device)
        self.batch_size = batch_size

    def embed_crops(self, crops: list[PersonCrop]) -> ReIDEmbeddings | None:
        """Embeddings of ``crops`` (None when there are none), ``batch_size`` crops per encoder call."""
        if not crops:
            return None
        return self.encoder.embed([c.image for c in crops], [c.keypoints for c in crops],
                                  [c.negative_keypoints for c in crops], batch_size=self.batch_size)

    def embed_batch(self, batch: BatchCrops) -> EmbeddedBatch:
        """Embed one batch's crops; their pixels are not kept."""
        return EmbeddedBatch(batch.frames, batch.records, self.embed_crops(batch.crops))

    def embed_video(self, video: VideoCrops) -> EmbeddedVideo:
        """Embed and track a whole video's crops in this process; the crops' pixels are dropped from the result."""
        batch = EmbeddedBatch(video.frames_sampled, video.records, self.embed_crops(video.crops))
        return assemble_video(video, [batch])
