"""The encoder of a hybrid model folder (``kpr_model.hybrid_files``): the global model's vector as the holistic
entry, KPR's parts and visibility."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kpr_model.embeddings import ReIDEmbeddings
from kpr_model.encoder import KPREncoder
from kpr_model.global_onnx import GlobalOnnxEncoder
from kpr_model.model_facts import KPR_KIND


class HybridEncoder:
    """Embeds crops with both models of a hybrid; drop-in for ``KPREncoder`` (K parts of D, D = the global size)."""

    kind = KPR_KIND

    def __init__(self, kpr: KPREncoder, whole: GlobalOnnxEncoder, model_id: str, holistic_weight: float) -> None:
        """``kpr`` embeds the parts, ``whole`` the holistic entry; ``model_id`` and ``holistic_weight`` are the
        hybrid's (``model_facts``)."""
        self.kpr, self.whole = kpr, whole
        self.model_id, self.holistic_weight = model_id, holistic_weight
        self.num_parts, self.dim = kpr.num_parts, kpr.dim

    def embed(
        self,
        crops: Sequence[np.ndarray],
        keypoints: Sequence[np.ndarray | None] | None = None,
        negative_keypoints: Sequence[np.ndarray | None] | None = None,
        batch_size: int = 64,
    ) -> ReIDEmbeddings:
        """Embeddings of HxWx3 uint8 RGB crops: KPR's parts prompted by the keypoints, the global model's vector."""
        parts = self.kpr.embed(crops, keypoints, negative_keypoints, batch_size=batch_size)
        whole = self.whole.embed(crops, keypoints, negative_keypoints, batch_size=batch_size)
        return ReIDEmbeddings(whole.global_emb, parts.parts, parts.visibility)
