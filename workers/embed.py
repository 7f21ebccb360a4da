"""The embedding stage: KPR part embeddings and visibility for crops, and a video's assembly into tracklets."""
from __future__ import annotations

from typing import Iterable

from kpr_model.embeddings import ReIDEmbeddings
from workers.records import BatchCrops, EmbeddedBatch, EmbeddedVideo, PersonCrop, VideoFacts
from workers.track import track_video


def assemble_video(facts: VideoFacts, batches: Iterable[EmbeddedBatch]) -> EmbeddedVideo:
    """Stitch a video's embedded batches (any order) in frame order and link its detections into tracklets."""
    batches = list(batches)
    frames = sum(batch.frames for batch in batches)
    dropped = sum(batch.dropped for batch in batches)
    found = sorted((b for b in batches if b.records), key=lambda b: b.records[0].frame_index)
    records = [record for batch in found for record in batch.records]
    if not found:
        return EmbeddedVideo(facts, records, None, [], frames, dropped)
    embeddings = ReIDEmbeddings.concat([batch.embeddings for batch in found])
    tracklets = track_video(facts.task.video_id, records, embeddings)
    return EmbeddedVideo(facts, records, embeddings, tracklets, frames, dropped)


class Embedder:
    """Holds one encoder (KPR checkpoint folder or ONNX file, or a global ReID ONNX model) and embeds crops with
    their keypoint prompts (``model_input``: a global model's pixel coding)."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 64, model_input: str | None = None):
        from kpr_model.model_files import open_encoder  # torch + timm: seconds to import, only embed workers need it

        self.encoder = open_encoder(model, device=device, input_coding=model_input)
        self.batch_size = batch_size

    def embed_crops(self, crops: list[PersonCrop]) -> ReIDEmbeddings | None:
        """Embeddings of ``crops`` (None when there are none), ``batch_size`` crops per encoder call."""
        if not crops:
            return None
        return self.encoder.embed([c.image for c in crops], [c.keypoints for c in crops],
                                  [c.negative_keypoints for c in crops], batch_size=self.batch_size)

    def embed_batch(self, batch: BatchCrops) -> EmbeddedBatch:
        """Embed one batch's crops; their pixels are not kept."""
        return EmbeddedBatch(batch.frames, batch.records, self.embed_crops(batch.crops), batch.dropped)

    def embed_video(self, facts: VideoFacts, crops: BatchCrops) -> EmbeddedVideo:
        """Embed and track a whole video's crops in this process; their pixels are not kept."""
        return assemble_video(facts, [self.embed_batch(crops)])
