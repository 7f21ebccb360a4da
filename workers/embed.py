"""The embedding stage: KPR part embeddings and visibility for the crops of one video."""
from __future__ import annotations

from dataclasses import dataclass

from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.model_files import open_encoder
from workers.video_job import DetectionRecord, VideoCrops


@dataclass
class EmbeddedVideo:
    """A video ready for the store: its facts, detection records and their embeddings (row-aligned)."""

    crops: VideoCrops
    embeddings: ReIDEmbeddings | None

    @property
    def records(self) -> list[DetectionRecord]:
        return self.crops.records


class Embedder:
    """Holds one KPR encoder (checkpoint folder or ONNX file) and embeds whole videos' crops with their prompts."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 64):
        self.encoder = open_encoder(model, device=device)
        self.batch_size = batch_size

    def embed_video(self, video: VideoCrops) -> EmbeddedVideo:
        """Embed every crop of ``video``; the crops' pixels are dropped from the result."""
        embeddings = None
        if video.crops:
            embeddings = self.encoder.embed(
                [c.image for c in video.crops],
                [c.keypoints for c in video.crops],
                [c.negative_keypoints for c in video.crops],
                batch_size=self.batch_size,
            )
        video.crops = []
        return EmbeddedVideo(video, embeddings)
