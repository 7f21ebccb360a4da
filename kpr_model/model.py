"""The KPR network (spec section 3): promptable backbone, pixel-to-part classifier, pooling heads.

Shapes, with N images [N, 3, H, W] (normalised), prompts [N, P + 2, H, W], K parts, D = embed_dim,
C = backbone feature depth, (Hf, Wf) the spatial feature size and num_classes identities:

- features F: [N, C, Hf, Wf]
- pixel_logits: [N, K + 1, Hf, Wf] (index 0 = background); part_maps = softmax over dim 1
- embeddings["global"], ["foreground"], ["background"]: [N, D]; ["parts"]: [N, K, D];
  ["concat_parts"]: [N, K * D]; the "bn_*" entries are the same after the BNNeck batch norm
- visibility: [N, K] in [0, 1]; 0 when the part wins no pixel under the per-pixel argmax of
  part_maps, else its peak probability over the pixels it wins (so ``visibility > 0`` is the
  official binary visibility)
- id_logits (only when num_classes > 0): "global", "foreground", "background", "concat_parts":
  [N, num_classes]; "parts": [N, K, num_classes]

Pooling follows the official code: global = average of F; parts = GWAP, sum(M_k F) / max(sum M_k,
1e-6); foreground (max over part maps) and background (map 0) = spatial mean of M F.

The forward is split as timm splits its models: ``forward_features`` (backbone, part maps,
visibility) is shared; ``forward_head`` adds every embedding and identity logit the losses need
(``forward`` = both, the training pass); ``forward_reid`` adds only the test-time outputs (the
BN-foreground and part embeddings), which is what the encoders and the ONNX export run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kpr_model.backbone import PromptableBackbone
from kpr_model.config import KPRConfig
from kpr_model.prompts import empty_prompt

HOLISTIC_TYPES = ("global", "foreground", "background", "concat_parts")
EMBEDDING_TYPES = HOLISTIC_TYPES + ("parts",)


@dataclass
class KPRFeatures:
    """What ``KPR.forward_features`` gives every pass: backbone features, pixel-to-part logits, maps, visibility."""

    features: torch.Tensor
    pixel_logits: torch.Tensor
    part_maps: torch.Tensor
    visibility: torch.Tensor


@dataclass
class KPROutput(KPRFeatures):
    """A training pass: the features plus every embedding and identity logit the losses use."""

    embeddings: dict[str, torch.Tensor]
    id_logits: dict[str, torch.Tensor]


class AfterPoolingDimReduce(nn.Module):
    """Linear + BN1d + ReLU from the feature depth to the embedding size; accepts [N, C] or [N, K, C]."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True))
        nn.init.normal_(self.layers[0].weight, 0.0, 0.01)
        nn.init.zeros_(self.layers[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            return self.layers(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)
        return self.layers(x)


class BNNeck(nn.Module):
    """BN1d with a frozen bias, then (when num_classes > 0) a bias-free linear identity classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, 0.0, 0.001)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feat = self.bn(x)
        return feat, (self.classifier(feat) if self.classifier is not None else None)


class PixelToPartClassifier(nn.Module):
    """BN2d + 1x1 conv: per-pixel logits over background + K parts."""

    def __init__(self, in_channels: int, num_parts: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.classifier = nn.Conv2d(in_channels, num_parts + 1, kernel_size=1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bn(x))


class KPR(nn.Module):
    """Keypoint Promptable ReID model: image (+ optional keypoint prompt) -> part-based embeddings."""

    def __init__(self, config: KPRConfig) -> None:
        super().__init__()
        self.config = config
        k, d = config.num_parts, config.embed_dim
        self.backbone = PromptableBackbone(config)
        depth = self.backbone.out_channels
        self.pixel_classifier = PixelToPartClassifier(depth, k)
        self.global_after_pooling_dim_reduce = AfterPoolingDimReduce(depth, d)
        self.foreground_after_pooling_dim_reduce = AfterPoolingDimReduce(depth, d)
        self.background_after_pooling_dim_reduce = AfterPoolingDimReduce(depth, d)
        self.parts_after_pooling_dim_reduce = AfterPoolingDimReduce(depth, d)
        self.global_identity_classifier = BNNeck(d, config.num_classes)
        self.foreground_identity_classifier = BNNeck(d, config.num_classes)
        self.background_identity_classifier = BNNeck(d, config.num_classes)
        self.concat_parts_identity_classifier = BNNeck(k * d, config.num_classes)
        self.parts_identity_classifier = nn.ModuleList(BNNeck(d, config.num_classes) for _ in range(k))

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None,
                cameras: torch.Tensor | None = None) -> KPROutput:
        """Training pass on normalised images [N, 3, H, W] and ``prompts`` [N, P + 2, Hp, Wp] or None (no prompt)."""
        return self.forward_head(self.forward_features(images, prompts, cameras))

    def forward_features(self, images: torch.Tensor, prompts: torch.Tensor | None = None,
                         cameras: torch.Tensor | None = None) -> KPRFeatures:
        """Prompted backbone features, their part maps and the part visibility: the part every pass shares.

        ``cameras`` [N] (camera ids of a model with camera embeddings) adds the camera term; None leaves it out.
        """
        n = images.shape[0]
        if prompts is None:
            prompts = empty_prompt(n, tuple(images.shape[-2:]), self.config, images.device)
        elif prompts.shape[1] != self.config.num_prompt_channels or prompts.shape[0] != n:
            raise ValueError(
                f"prompts must be [{n}, {self.config.num_prompt_channels}, H, W], got {tuple(prompts.shape)}"
            )
        feats = self.backbone(images, prompts, cameras)
        pixel_logits = self.pixel_classifier(feats)
        maps = pixel_logits.softmax(dim=1)
        return KPRFeatures(features=feats, pixel_logits=pixel_logits, part_maps=maps,
                           visibility=part_visibility(maps.detach()))

    def forward_head(self, x: KPRFeatures) -> KPROutput:
        """Every embedding (plain and after the BNNeck) and, when num_classes > 0, every identity logit."""
        feats, maps = x.features, x.part_maps
        emb = {
            "global": self.global_after_pooling_dim_reduce(feats.mean(dim=(2, 3))),
            "foreground": self.foreground_after_pooling_dim_reduce(_pool_foreground(feats, maps)),
            "background": self.background_after_pooling_dim_reduce((maps[:, :1] * feats).mean(dim=(2, 3))),
            "parts": self.parts_after_pooling_dim_reduce(_pool_parts(feats, maps)),
        }
        emb["concat_parts"] = emb["parts"].flatten(1, 2)
        logits: dict[str, torch.Tensor] = {}
        for name in HOLISTIC_TYPES:
            emb[f"bn_{name}"], logit = getattr(self, f"{name}_identity_classifier")(emb[name])
            if logit is not None:
                logits[name] = logit
        part_outputs = [neck(emb["parts"][:, i]) for i, neck in enumerate(self.parts_identity_classifier)]
        emb["bn_parts"] = torch.stack([feat for feat, _ in part_outputs], dim=1)
        if self.config.num_classes > 0:
            logits["parts"] = torch.stack([logit for _, logit in part_outputs], dim=1)
        return KPROutput(features=feats, pixel_logits=x.pixel_logits, part_maps=maps, visibility=x.visibility,
                         embeddings=emb, id_logits=logits)

    def forward_reid(
        self, images: torch.Tensor, prompts: torch.Tensor | None = None, cameras: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Test-time pass computing only what retrieval uses (spec section 5), no training-only head.

        Returns the L2-normalised BN-foreground embedding [N, D], the L2-normalised part embeddings
        [N, K, D] and the visibility [N, K], equal to those of ``forward`` on the same inputs.
        """
        x = self.forward_features(images, prompts, cameras)
        foreground = self.foreground_after_pooling_dim_reduce(_pool_foreground(x.features, x.part_maps))
        holistic = self.foreground_identity_classifier.bn(foreground)
        parts = self.parts_after_pooling_dim_reduce(_pool_parts(x.features, x.part_maps))
        return F.normalize(holistic, dim=-1), F.normalize(parts, dim=-1), x.visibility

    def load_backbone_weights(self, path: str | Path) -> None:
        """Initialise the backbone from local timm weights (see ``PromptableBackbone.load_backbone_weights``)."""
        self.backbone.load_backbone_weights(path)


def _pool_foreground(feats: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Foreground pooling [N, C]: spatial mean of the features weighted by the max over the K part maps."""
    return (maps[:, 1:].amax(dim=1, keepdim=True) * feats).mean(dim=(2, 3))


def _pool_parts(feats: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """GWAP part pooling [N, K, C]: sum(M_k F) / max(sum M_k, 1e-6) for each part map M_k."""
    part_maps = maps[:, 1:]
    mass = part_maps.sum(dim=(2, 3)).clamp_min(1e-6)
    return torch.einsum("nkhw,nchw->nkc", part_maps, feats) / mass[..., None]


def part_visibility(maps: torch.Tensor) -> torch.Tensor:
    """Per-part visibility [N, K] from softmax maps [N, K + 1, H, W]: peak probability over won pixels, else 0."""
    winners = F.one_hot(maps.argmax(dim=1), maps.shape[1]).permute(0, 3, 1, 2).to(maps.dtype)
    return (maps * winners).amax(dim=(2, 3))[:, 1:]
