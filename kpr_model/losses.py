"""KPR training losses (spec section 4): GiLt + body-part attention.

- GiLt: label-smoothed cross-entropy on the id logits of the holistic embeddings (global,
  foreground, concat_parts; background and per-part id terms exist with weight 0 by default) and a
  batch-hard triplet loss on the part embeddings with the part-averaged distance (optionally only
  over mutually visible parts).
- Body-part attention: pixel-wise label-smoothed cross-entropy of the K + 1 pixel logits against an
  integer part-label map [N, H, W] (0 = background, 1..K = parts), resized to the feature size by
  nearest-neighbour.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kpr_model.config import LossConfig
from kpr_model.model import KPROutput


def part_averaged_distances(parts: torch.Tensor, visibility: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise distances [N, N] between part embeddings [N, K, D]: mean of per-part euclidean distances.

    With boolean ``visibility`` [N, K] only mutually visible parts count; pairs without any are -1.
    """
    per_part = parts.transpose(0, 1)  # [K, N, D]
    squared = _squared_distances(per_part)
    dist = torch.where(squared > 0, squared.clamp_min(1e-12).sqrt(), torch.zeros_like(squared))
    if visibility is None:
        return dist.mean(dim=0)
    vis = visibility.t().to(dist.dtype)  # [K, N]
    mutual = vis[:, :, None] * vis[:, None, :]
    count = mutual.sum(dim=0)
    mean = (dist * mutual).sum(dim=0) / count.clamp_min(1.0)
    return torch.where(count > 0, mean, torch.full_like(mean, -1.0))


def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    """Batched squared euclidean distances [K, N, N] of x [K, N, D] (clamped at 0)."""
    sq = (x * x).sum(dim=-1)
    return (sq[:, :, None] - 2 * x @ x.transpose(1, 2) + sq[:, None, :]).clamp_min(0.0)


def batch_hard_triplet(dist: torch.Tensor, pids: torch.Tensor, margin: float) -> tuple[torch.Tensor, float]:
    """Batch-hard triplet loss over a distance matrix [N, N] (-1 = incomparable pair) and the valid anchor ratio.

    Anchors without a valid positive or negative are skipped; with none left the loss is 0.
    """
    valid = dist >= 0
    same = pids[:, None] == pids[None, :]
    eye = torch.eye(len(pids), dtype=torch.bool, device=dist.device)
    positive = same & ~eye & valid
    negative = ~same & valid
    hardest_pos = torch.where(positive, dist, torch.full_like(dist, -1.0)).amax(dim=1)
    hardest_neg = torch.where(negative, dist, torch.full_like(dist, float("inf"))).amin(dim=1)
    anchors = positive.any(dim=1) & negative.any(dim=1)
    if not anchors.any():
        return dist.sum() * 0.0, 0.0
    losses = F.relu(hardest_pos[anchors] - hardest_neg[anchors] + margin)
    return losses.mean(), float(anchors.float().mean())


def body_part_attention_loss(
    pixel_logits: torch.Tensor, part_labels: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Pixel-wise cross-entropy of logits [N, K + 1, Hf, Wf] against part targets (see `part_labels_at`)."""
    labels = part_labels_at(part_labels, pixel_logits.shape[-2:])
    return F.cross_entropy(pixel_logits, labels, label_smoothing=label_smoothing)


def part_labels_at(part_targets: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The pixel labels [N, Hf, Wf] (0 = background) that the attention loss teaches at the classifier's ``size``.

    Targets are labels [N, H, W] (resized by nearest) or background + part probabilities [N, K + 1, H, W],
    resized bilinearly and then labelled by their argmax, as the official engine does.
    """
    if part_targets.dim() == 4:
        return F.interpolate(part_targets.float(), size=size, mode="bilinear").argmax(dim=1)
    if part_targets.shape[-2:] != size:
        part_targets = F.interpolate(part_targets[:, None].float(), size=size, mode="nearest")[:, 0]
    return part_targets.long()


class KPRLoss(nn.Module):
    """GiLt + body-part attention loss; returns the weighted total and a dict of float terms for logging."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self, output: KPROutput, pids: torch.Tensor, part_labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch: ``pids`` [N] identity labels, ``part_labels`` part targets (see
        ``body_part_attention_loss``) or None (term skipped)."""
        cfg = self.config
        terms: list[torch.Tensor] = []
        log: dict[str, float] = {}
        for name, weight in cfg.id_weights().items():
            if weight <= 0:
                continue
            if name not in output.id_logits:
                raise ValueError(f"id loss on {name!r} needs a model built with num_classes > 0")
            logits = output.id_logits[name]
            targets = pids if logits.ndim == 2 else pids[:, None].expand(-1, logits.shape[1])
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 label_smoothing=cfg.label_smoothing)
            terms.append(weight * ce)
            log[f"id_{name}"] = float(ce.detach())
            log[f"acc_{name}"] = float((logits.argmax(dim=-1) == targets).float().mean())
        if cfg.triplet_parts > 0:
            visibility = output.visibility > 0 if cfg.triplet_use_visibility else None
            dist = part_averaged_distances(output.embeddings["parts"], visibility)
            triplet, valid_ratio = batch_hard_triplet(dist, pids, cfg.triplet_margin)
            terms.append(cfg.triplet_parts * triplet)
            log["triplet_parts"] = float(triplet.detach())
            log["triplet_valid_ratio"] = valid_ratio
        if cfg.part_attention > 0 and part_labels is not None:
            attention = body_part_attention_loss(output.pixel_logits, part_labels, cfg.part_attention_label_smoothing)
            terms.append(cfg.part_attention * attention)
            log["part_attention"] = float(attention.detach())
        total = torch.stack(terms).sum() if terms else output.pixel_logits.sum() * 0.0
        log["loss"] = float(total.detach())
        return total, log


def relational_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared gap between the pairwise cosine similarities of student [N, D] and teacher [N, Dt] embeddings.

    Matching the batch's similarity structure rather than the vectors lets a teacher of another dimension
    (a global ReID model trained on real people) teach KPR which crops look alike.
    """
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    off_diagonal = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return F.mse_loss((s @ s.T)[off_diagonal], (t @ t.T)[off_diagonal])
